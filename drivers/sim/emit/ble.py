"""Simulated heart-rate straps as virtual BLE peripherals: the demo/test backend of ``kind = "ble"``.

**This is not a production backend.** With ``backend = "virtual"`` a ``kind = "ble"`` entry does not touch a
radio: :class:`VirtualBleDriver` starts, inside the agent process, a Bumble virtual radio
(:class:`drivers.sim.virtual_ble.VirtualAir`) with one peripheral per entry -- a real GATT server with the Heart
Rate Service -- and a :class:`HeartRateEmitter` that notifies the :class:`~drivers.sim.health.HeartRateStrap`
simulator's heart rate and RR intervals (device id = the entry's ``id``, subject, ``sim_seed``) as Heart Rate
Measurement values (0x2A37: flags 0x16 = uint8 rate, skin contact detected, RR intervals present; RR in 1/1024 s),
once per simulated second, and its battery level on the Battery Service. The gateway side is the production
code, unmodified: bleak (with the virtual backend classes) -> :class:`~drivers.ble.transport.Link` ->
:class:`~drivers.ble.driver.BleDriver` -> the GATT decoders.

The emitter runs on the agent's own clock (``BuildContext.clock``), so what the strap notifies for simulated
second ``t`` arrives when the gateway's clock reads ``t`` (plus the in-process latency). When it wakes late it
notifies only the latest second (a strap does not replay missed beats); ``skipped`` counts the others.

Bumble is a development dependency: only demos and tests configure this backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from drivers.ble import gatt
from drivers.ble.device import DeviceFields
from drivers.sim.health import HeartRateStrap
from kyojo.contract.vocab import Clock, Reading

if TYPE_CHECKING:
    from drivers.ble.driver import BleDriver
    from drivers.registry import BuildContext
    from drivers.sim.virtual_ble import VirtualAir, VirtualPeripheral


class Config(DeviceFields):
    """A ``kind = "ble"``, ``backend = "virtual"`` entry: the BLE family's device fields, and the seed of the
    simulator that plays the strap. :func:`drivers.registry.validate` picks this model for such entries
    (:data:`drivers.registry.DOUBLES`), so the family's own config knows only ``backend = "bleak"``."""

    backend: Literal["virtual"]
    sim_seed: int = Field(0, description="seed of the simulator playing the virtual device")

    @model_validator(mode="after")
    def _heart_rate_only(self) -> Config:
        if self.profile != "heart_rate":
            raise ValueError("backend 'virtual' plays heart_rate devices only")
        return self


#: Heart Rate Measurement flags: uint8 rate, sensor contact supported and detected, RR intervals present.
HRM_FLAGS = 0x16
#: At most this many RR intervals fit one notification with the default ATT MTU (23: 20 bytes of value).
MAX_RR = 9


def heart_rate_measurement(bpm: float, rr_ms: Sequence[float]) -> bytes:
    """A Heart Rate Measurement value (0x2A37) for ``bpm`` and the RR intervals (ms) of the last second."""
    rr = [round(ms * 1.024) for ms in rr_ms][-MAX_RR:]
    flags = HRM_FLAGS if rr else HRM_FLAGS & ~0x10
    return struct.pack(f"<BB{len(rr)}H", flags, round(bpm), *rr)


class HeartRateEmitter:
    """Notifies ``strap``'s readings through ``peripheral`` as simulated seconds pass on ``clock``."""

    def __init__(self, peripheral: VirtualPeripheral, strap: HeartRateStrap, clock: Clock) -> None:
        self.peripheral = peripheral
        self.strap = strap
        self.clock = clock
        self.sent = 0
        self.skipped = 0

    async def run(self) -> None:
        """Notify until cancelled (values are only sent while the gateway is subscribed)."""
        step = math.floor(self.clock.now())
        while True:
            now = self.clock.now()
            if now < step + 1:
                await self.clock.sleep(step + 1 - now)
                continue
            latest = math.floor(now)
            self.skipped += latest - step - 1
            readings = self.strap.readings_between(latest - 1, latest)
            step = latest
            hr = [r.value for r in readings if r.metric == "heart_rate"]
            rr = [r.value for r in readings if r.metric == "rr_interval"]
            battery = [r.value for r in readings if r.metric == "battery_level"]
            if not self.peripheral.connected:
                continue
            if battery:
                await self.peripheral.set_battery(int(battery[-1]))
            if hr:
                await self.peripheral.send(gatt.HEART_RATE_MEASUREMENT, heart_rate_measurement(hr[-1], rr))
                self.sent += 1


_AIRS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, VirtualAir] = weakref.WeakKeyDictionary()


async def shared_air() -> VirtualAir:
    """The process' virtual radio for the running event loop (created and powered on at first use)."""
    from drivers.sim.virtual_ble import VirtualAir

    loop = asyncio.get_running_loop()
    air = _AIRS.get(loop)
    if air is None:
        air = _AIRS[loop] = VirtualAir()
        await air.start()
    return air


class VirtualBleDriver:
    """A ``kind = "ble"`` entry with ``backend = "virtual"``: the production :class:`BleDriver` against a
    virtual heart-rate strap played by the simulator (see the module docstring)."""

    def __init__(self, config: Config, ctx: BuildContext) -> None:
        if config.profile != "heart_rate":
            raise ValueError(f"the virtual BLE backend plays heart_rate devices only, not {config.profile!r}")
        self.config = config
        self.ctx = ctx
        self.device_id = config.id
        self.strap = HeartRateStrap(config.id, config.subject, config.sim_seed)
        self.inner: BleDriver | None = None
        self.emitter: HeartRateEmitter | None = None

    async def readings(self) -> AsyncIterator[Reading]:
        """Start (or rejoin) the virtual strap and its emitter, then yield what the real driver reads."""
        from drivers.ble.device import shared_scanner
        from drivers.ble.driver import BleDriver
        from drivers.ble.profiles import PROFILES
        from drivers.ble.transport import Link
        from kyojo.runtime.backoff import Backoff

        cfg = self.config
        air = await shared_air()
        peripheral = air.peripherals.get(cfg.address.upper())
        if peripheral is None:
            peripheral = await air.add(cfg.address, "heart_rate", name=f"HRM {cfg.id}"[:24], battery=100)
        else:
            await peripheral.advertise()
        self.emitter = HeartRateEmitter(peripheral, self.strap, self.ctx.clock)
        task = asyncio.create_task(self.emitter.run(), name=f"virtual-hr-{cfg.id}")
        backend = air.backend()
        link = Link(
            cfg.address,
            PROFILES[cfg.profile].subscriptions,
            scanner=shared_scanner(backend),
            clock=self.ctx.clock,
            backend=backend,
            backoff=Backoff(cfg.backoff_initial.total_seconds(), cfg.backoff_max.total_seconds()),
            scan_timeout=cfg.scan_timeout.total_seconds(),
            connect_timeout=cfg.connect_timeout.total_seconds(),
        )
        self.inner = BleDriver(cfg.id, cfg.subject, link, self.ctx.clock, lenient=cfg.lenient_length)
        agen = self.inner.readings()
        try:
            async for r in agen:
                yield r
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await agen.aclose()  # type: ignore[attr-defined]

    def health(self) -> Mapping[str, object]:
        """The real driver's health, plus ``backend: virtual`` and the emitter's counters."""
        base: dict[str, object] = dict(self.inner.health()) if self.inner is not None else {"device": self.device_id}
        base["backend"] = "virtual"
        if self.emitter is not None:
            base["virtual_sent"] = self.emitter.sent
            base["virtual_skipped"] = self.emitter.skipped
        return base


def build(config: Config, ctx: BuildContext) -> list[VirtualBleDriver]:
    """The drivers of a ``backend = "virtual"`` entry (called by :func:`drivers.registry.build`, see ``DOUBLES``)."""
    return [VirtualBleDriver(config, ctx)]
