"""The production bleak transport and driver against virtual Bumble peripherals with real GATT servers.

Nothing in drivers.ble.transport / driver is mocked: bleak runs with the virtual backend (``BleakScanner(
backend=...)``, ``BleakClient(..., backend=...)``), the peripherals advertise, accept LE connections, serve
discovery, take CCCD writes and send the vectors' payloads as ATT notifications and indications.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from drivers.ble import gatt
from drivers.ble.convert import to_readings
from drivers.ble.device import Config, build
from drivers.ble.driver import BleDriver
from drivers.ble.errors import BleParseError
from drivers.ble.profiles import PROFILES
from drivers.ble.transport import Link, SharedScanner
from drivers.registry import BuildContext
from drivers.sim.virtual_ble import VirtualAir, VirtualPeripheral
from kyojo.contract.vocab import Reading
from kyojo.runtime.backoff import Backoff
from tests.kit import DATA, wait_for_async

VECTORS: list[dict[str, Any]] = json.loads((DATA / "ble" / "vectors.json").read_text())

PROFILE_OF = {sub.uuid: p.name for p in PROFILES.values() for sub in p.subscriptions}


class RealClock:
    """kyojo.contract.vocab.Clock on the event loop's real time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(main())


def make_driver(
    air: VirtualAir, peripheral: VirtualPeripheral, scanner: SharedScanner, *, device_id: str = "dev", **kw: Any
) -> BleDriver:
    backend = air.backend()
    link = Link(
        peripheral.address,
        peripheral.profile.subscriptions,
        scanner=scanner,
        clock=RealClock(),
        backend=backend,
        backoff=Backoff(0.01, 0.05),
        scan_timeout=0.5,
        connect_timeout=2,
    )
    return BleDriver(device_id, "p1", link, RealClock(), **kw)


class Collector:
    """Runs ``driver.readings()`` in a task and keeps what it yields."""

    def __init__(self, driver: BleDriver) -> None:
        self.driver = driver
        self.readings: list[Reading] = []
        self.task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for reading in self.driver.readings():
            self.readings.append(reading)

    async def __aenter__(self) -> Collector:
        self.task = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[list[Reading]], bool], within_s: float = 20) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self.readings):
                if self.task is not None and self.task.done():
                    self.task.result()
                await asyncio.sleep(0.01)


def _key(r: Reading) -> tuple[str, str, str, float, str]:
    return (r.device, r.subject, r.metric, round(r.value, 9), r.unit)


VECTOR_PROFILES = sorted(
    {
        PROFILE_OF[u]
        for v in VECTORS
        if v["characteristic_uuid"] and (u := int(v["characteristic_uuid"], 16)) in PROFILE_OF
    }
)


@pytest.mark.parametrize("profile", VECTOR_PROFILES)
def test_profile_delivers_every_vector(profile: str) -> None:
    """Each vector of the profile's characteristics travels as a real notification/indication; the driver
    yields exactly the Readings the sans-IO decoder gives, and counts the payloads it must reject."""
    vectors = [
        v for v in VECTORS if v["characteristic_uuid"] and PROFILE_OF.get(int(v["characteristic_uuid"], 16)) == profile
    ]

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:00:10", profile, battery=64)  # type: ignore[arg-type]
            driver = make_driver(air, dev, SharedScanner(air.backend()), device_id=profile)
            want: list[tuple[str, str, str, float, str]] = [(profile, "p1", "battery_level", 64.0, "%")]
            rejected = 0
            async with Collector(driver) as got:
                for sub in dev.profile.subscriptions:
                    await dev.wait_subscribed(sub.uuid)
                for v in vectors:
                    uuid, payload = int(v["characteristic_uuid"], 16), bytes.fromhex(v["hex"])
                    await dev.send(uuid, payload)
                    try:
                        value = gatt.decode(uuid, payload)
                    except BleParseError:
                        rejected += 1
                        continue
                    conv = to_readings(value, device=profile, subject="p1", ts=0)
                    want.extend(_key(r) for r in conv.readings)
                await got.wait_for(lambda rs: len(rs) >= len(want))
                await wait_for_async(lambda: sum(driver.parse_errors.values()) == rejected)
            assert sorted(map(_key, got.readings)) == sorted(want)
            assert sum(driver.parse_errors.values()) == rejected
            assert driver.health()["battery_level"] == 64
            assert driver.health()["connected"] is False  # the collector stopped: link torn down
        finally:
            await air.close()

    run(main)


def test_several_devices_one_scanner_and_reconnect() -> None:
    """Three devices at once through one shared scanner; a dropped device is reconnected with backoff and
    its next values arrive; the others are not disturbed."""

    async def main() -> None:
        air = VirtualAir()
        try:
            hr = await air.add("C0:00:00:00:00:01", "heart_rate", battery=80)
            bp = await air.add("C0:00:00:00:00:02", "blood_pressure", battery=None)
            th = await air.add("C0:00:00:00:00:03", "thermometer", battery=55)
            scanner = SharedScanner(air.backend())
            drivers = [make_driver(air, d, scanner, device_id=d.profile.name) for d in (hr, bp, th)]
            async with Collector(drivers[0]) as c_hr, Collector(drivers[1]) as c_bp, Collector(drivers[2]) as c_th:
                await hr.wait_subscribed(0x2A37)
                await bp.wait_subscribed(0x2A35)
                await th.wait_subscribed(0x2A1C)
                await hr.send(0x2A37, bytes.fromhex("0648"))  # 72 bpm, contact detected
                await bp.send(0x2A35, bytes.fromhex("1e8a00580078000000041114293b3c00012700"))
                await th.send(0x2A1C, bytes.fromhex("00720100ff"))  # 37.0 degC
                await c_hr.wait_for(lambda rs: any(r.metric == "heart_rate" for r in rs))
                await c_bp.wait_for(lambda rs: len(rs) == 4)
                await c_th.wait_for(lambda rs: any(r.metric == "body_temperature" for r in rs))

                await hr.drop()
                await wait_for_async(lambda: drivers[0].link.state.reconnects == 1 and drivers[0].link.state.connected)
                await hr.wait_subscribed(0x2A37)
                await hr.send(0x2A37, bytes.fromhex("0650"))  # 80 bpm
                await c_hr.wait_for(lambda rs: [r.value for r in rs if r.metric == "heart_rate"] == [72.0, 80.0])

                health = drivers[0].health()
                assert health["connects"] == 2
                assert health["rssi"] is not None
                assert health["last_seen"] is not None
                assert health["battery_level"] == 80
                assert drivers[1].health()["reconnects"] == 0
                assert drivers[2].health()["connects"] == 1
            assert {(r.metric, r.value) for r in c_bp.readings} == {
                ("systolic", 138.0),
                ("diastolic", 88.0),
                ("mean_arterial_pressure", 120.0),
                ("pulse_rate", 60.0),
            }
            assert [r.value for r in c_th.readings if r.metric == "body_temperature"] == [37.0]
        finally:
            await air.close()

    run(main)


def test_device_out_of_range_is_retried_until_it_comes_back() -> None:
    async def main() -> None:
        air = VirtualAir()
        try:
            hr = await air.add("C0:00:00:00:00:04", "heart_rate")
            driver = make_driver(air, hr, SharedScanner(air.backend()))
            async with Collector(driver) as got:
                await hr.wait_subscribed(0x2A37)
                await hr.go_away()
                # scan timeouts (0.5 s) count as failed attempts; the link keeps trying
                await wait_for_async(lambda: driver.link.state.reconnects >= 2, within=20)
                assert driver.health()["connected"] is False
                assert "TimeoutError" in str(driver.health()["last_error"])
                await hr.advertise()
                await hr.wait_subscribed(0x2A37, within_s=20)
                await hr.send(0x2A37, bytes.fromhex("064b"))
                await got.wait_for(lambda rs: any(r.metric == "heart_rate" and r.value == 75 for r in rs))
        finally:
            await air.close()

    run(main)


def test_wrong_device_at_the_address_is_refused() -> None:
    """A thermometer where a heart-rate strap is configured: no Heart Rate Measurement, the link says so."""

    async def main() -> None:
        air = VirtualAir()
        try:
            th = await air.add("C0:00:00:00:00:05", "thermometer")
            scanner = SharedScanner(air.backend())
            link = Link(
                th.address,
                PROFILES["heart_rate"].subscriptions,
                scanner=scanner,
                clock=RealClock(),
                backend=air.backend(),
                backoff=Backoff(0.01, 0.02),
            )
            driver = BleDriver("hr", "p1", link, RealClock())
            async with Collector(driver):
                await wait_for_async(lambda: "MissingCharacteristic" in str(driver.health()["last_error"]))
            assert driver.health()["connects"] == 0
        finally:
            await air.close()

    run(main)


def test_decode_errors_and_held_back_values_keep_health_data_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed and an implausible heart-rate value from a real GATT server: logged once each with the cause,
    the characteristic and the length, never the bytes nor the value."""
    caplog.set_level(logging.DEBUG, logger="drivers.ble")

    async def main() -> None:
        air = VirtualAir()
        try:
            hr = await air.add("C0:00:00:00:00:0A", "heart_rate", battery=None)
            driver = make_driver(air, hr, SharedScanner(air.backend()), device_id="strap")
            async with Collector(driver) as got:
                await hr.wait_subscribed(0x2A37)
                for _ in range(2):
                    await hr.send(0x2A37, bytes([0x10, 0xE7, 0x01]))  # 231 bpm, RR flag with 1 odd byte
                    await hr.send(0x2A37, bytes([0x00, 0x07]))  # 7 bpm: implausible, held back
                await hr.send(0x2A37, bytes([0x00, 0x48]))  # 72 bpm: the one reading
                await got.wait_for(lambda rs: len(rs) == 1)
            assert [(r.metric, r.value) for r in got.readings] == [("heart_rate", 72.0)]
            assert driver.parse_errors == {"0x2A37:inconsistent": 2}
            assert driver.flagged == {"heart_rate:implausible": 2}
        finally:
            await air.close()

    run(main)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("drivers.ble.driver")]
    assert lines == [
        "strap: 0x2A37 value refused: inconsistent: RR flag set but RR bytes missing/odd (3 bytes)",
        "strap: held back a heart_rate value (implausible)",
    ]
    everything = " ".join(r.getMessage() for r in caplog.records)
    assert "10e701" not in everything.lower() and "231" not in everything and "0007" not in everything


def test_discover_by_advertised_service() -> None:
    async def main() -> None:
        air = VirtualAir()
        try:
            await air.add("C0:00:00:00:00:06", "heart_rate", name="Strap")
            await air.add("C0:00:00:00:00:07", "weight_scale", name="Scale")
            await air.add("C0:00:00:00:00:08", "heart_rate", name="Watch")
            found = await SharedScanner(air.backend()).discover([0x180D], duration=0.2)
            assert sorted(found) == ["C0:00:00:00:00:06", "C0:00:00:00:00:08"]
            assert {s.name for s in found.values()} == {"Strap", "Watch"}
            assert all(gatt.uuid128(0x180D) in s.service_uuids for s in found.values())
        finally:
            await air.close()

    run(main)


def test_shared_user_device_maps_user_ids() -> None:
    """A BP monitor used by two people: User ID 1 -> p1, 2 -> p2, anything else held back."""

    async def main() -> None:
        air = VirtualAir()
        try:
            bp = await air.add("C0:00:00:00:00:09", "blood_pressure", battery=None)
            driver = make_driver(air, bp, SharedScanner(air.backend()), user_subjects={1: "p1", 2: "p2"})
            async with Collector(driver) as got:
                await bp.wait_subscribed(0x2A35)
                for user in (1, 2, 7):
                    # flags: Pulse Rate + User ID; 120/80/93 mmHg, pulse 70
                    await bp.send(0x2A35, bytes([0x0C]) + bytes.fromhex("780050005d004600") + bytes([user]))
                await got.wait_for(lambda rs: len(rs) == 8)
                await wait_for_async(lambda: driver.flagged["unmapped_user"] == 1)
            assert {(r.subject, r.metric) for r in got.readings if r.metric == "systolic"} == {
                ("p1", "systolic"),
                ("p2", "systolic"),
            }
        finally:
            await air.close()

    run(main)


def test_config_and_build(tmp_path: Path) -> None:
    entry = {
        "kind": "ble",
        "id": "hr-1",
        "address": "c0:00:00:00:00:0a",
        "profile": "heart_rate",
        "subject": "p1",
        "backoff_initial": 0.01,
    }
    config = Config.model_validate(entry)
    assert config.backoff_initial.total_seconds() == 0.01
    for bad in ({"extra": 1}, {"profile": "toaster"}, {"address": "nope"}, {"user_subjects": {255: "p1"}}):
        with pytest.raises(pydantic.ValidationError):
            Config.model_validate({**entry, **bad})

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:00:0A", "heart_rate")
            ctx = BuildContext(gateway_id="gw", clock=RealClock(), clock_speed=1.0, data_dir=tmp_path)
            (driver,) = build(config, ctx, backend=air.backend())
            assert driver.device_id == "hr-1"
            async with Collector(driver) as got:  # type: ignore[arg-type]
                await dev.wait_subscribed(0x2A37)
                await dev.send(0x2A37, bytes.fromhex("0648"))
                await got.wait_for(lambda rs: any(r.metric == "heart_rate" for r in rs))
            assert got.readings[0].device == "hr-1"
        finally:
            await air.close()

    run(main)


def test_a_link_stops_when_a_library_swallowed_its_cancellation() -> None:
    """Python 3.11's asyncio.wait_for (inside bleak's and Bumble's connects) can turn a cancellation that lands
    as the awaited thing completes into a result or a TimeoutError. The link used to carry on reconnecting, so
    the agent (or a test) waiting for its driver to stop waited forever; it now honours the request still
    counted on its task (found as a 1-in-60 hang of test_ble_pair under load)."""

    class SwallowingScanner:
        def __init__(self) -> None:
            self.sightings: dict[str, Any] = {}
            self.looking = asyncio.Event()
            self.finds = 0

        async def find(self, address: str, within_s: float) -> Any:
            self.finds += 1
            self.looking.set()
            if self.finds > 1:  # only the first (so that a failing test still ends)
                await asyncio.sleep(3600)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise TimeoutError("the cancellation was swallowed, as 3.11's wait_for can") from None

    async def main() -> None:
        scanner = SwallowingScanner()
        link = Link("AA:BB:CC:DD:EE:01", (), scanner=scanner, clock=RealClock(), backoff=Backoff(0.01, 0.05))  # type: ignore[arg-type]
        task = asyncio.create_task(link.run(lambda *_: None))
        await scanner.looking.wait()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)  # not `await task`: that would cancel it again
        assert task in done, "the link kept reconnecting after it was cancelled"
        assert task.cancelled()
        assert scanner.finds == 1  # it did not look for its peer again after being told to stop
        assert link.state.last_error is not None and "swallowed" in link.state.last_error

    run(main, timeout=30)
