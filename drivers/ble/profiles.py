"""Which service a device of each profile advertises and which characteristics the gateway subscribes to.

Sans-IO data only (16-bit SIG UUIDs); the transport turns them into 128-bit strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.ble import gatt

ProfileName = Literal[
    "heart_rate", "blood_pressure", "thermometer", "glucose", "pulse_oximeter", "weight_scale", "body_composition"
]

#: Battery Service, read once per connection (and subscribed to when it notifies)
BATTERY_SERVICE = 0x180F


@dataclass(frozen=True, slots=True)
class Subscription:
    """A characteristic to subscribe to; ``required`` ones must exist or the connection is refused."""

    uuid: int
    required: bool = True


@dataclass(frozen=True, slots=True)
class Profile:
    """A Bluetooth SIG profile as the gateway uses it."""

    name: ProfileName
    service: int  # the primary service the device advertises
    subscriptions: tuple[Subscription, ...]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        # Heart Rate Service 0x180D: HRM notifies
        Profile("heart_rate", 0x180D, (Subscription(gatt.HEART_RATE_MEASUREMENT),)),
        # Blood Pressure Service 0x1810: BPM indicates; Intermediate Cuff Pressure (optional) notifies
        Profile(
            "blood_pressure",
            0x1810,
            (Subscription(gatt.BLOOD_PRESSURE_MEASUREMENT), Subscription(gatt.INTERMEDIATE_CUFF_PRESSURE, False)),
        ),
        # Health Thermometer Service 0x1809: Temperature Measurement indicates
        Profile("thermometer", 0x1809, (Subscription(gatt.TEMPERATURE_MEASUREMENT),)),
        # Glucose Service 0x1808: measurements notify in answer to a RACP (0x2A52) "report stored records"
        # request (see drivers.ble.transport.Link._drain)
        Profile(
            "glucose",
            0x1808,
            (Subscription(gatt.GLUCOSE_MEASUREMENT), Subscription(gatt.GLUCOSE_MEASUREMENT_CONTEXT, False)),
        ),
        # Pulse Oximeter Service 0x1822: spot-check indicates, continuous notifies; a device has either or both
        Profile(
            "pulse_oximeter",
            0x1822,
            (
                Subscription(gatt.PLX_SPOT_CHECK_MEASUREMENT, False),
                Subscription(gatt.PLX_CONTINUOUS_MEASUREMENT, False),
            ),
        ),
        # Weight Scale Service 0x181D: Weight Measurement indicates
        Profile("weight_scale", 0x181D, (Subscription(gatt.WEIGHT_MEASUREMENT),)),
        # Body Composition Service 0x181B: Body Composition Measurement indicates
        Profile("body_composition", 0x181B, (Subscription(gatt.BODY_COMPOSITION_MEASUREMENT),)),
    )
}

#: profiles whose devices store measurements while out of range and hand them over on reconnection (by RACP,
#: or by re-sending their memory when indications are enabled): their links remember what was taken
STORING_PROFILES: frozenset[str] = frozenset(
    {"blood_pressure", "glucose", "weight_scale", "body_composition", "thermometer", "pulse_oximeter"}
)
