"""Stored-record drain over real GATT: RACP on a virtual glucose meter, memory re-sent by a virtual cuff.

The production Link/BleDriver/RecordLog run unmodified with the virtual bleak backend; the meter's RACP is a
real GATT characteristic (write + indicate) answering per the Glucose Service spec.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers.ble import racp
from drivers.ble.device import Config, build
from drivers.ble.driver import BleDriver
from drivers.ble.records import RecordLog
from drivers.ble.transport import Link, SharedScanner
from drivers.registry import BuildContext
from drivers.sim.virtual_ble import VirtualAir, VirtualPeripheral
from kyojo.runtime.backoff import Backoff
from tests.drivers.test_ble_transport import Collector, RealClock, run
from tests.kit import wait_for_async


def glucose(seq: int, mg_dl: int = 100) -> bytes:
    """Glucose Measurement: flags 0x02 (concentration + type/location, kg/L), seq, 2026-11-26 08:mm:00."""
    base = (2026).to_bytes(2, "little") + bytes([11, 26, 8, seq % 60, 0])
    conc = (0xB000 | mg_dl).to_bytes(2, "little")  # SFLOAT mantissa mg/dL, exponent -5: kg/L
    return bytes([0x02]) + seq.to_bytes(2, "little") + base + conc + bytes([0x11])  # capillary blood, finger


def bpm(minute: int, systolic: int = 120) -> bytes:
    """Blood Pressure Measurement with a Time Stamp: systolic/80/93 mmHg at 2026-11-26 07:mm:00."""
    stamp = (2026).to_bytes(2, "little") + bytes([11, 26, 7, minute, 0])
    return bytes([0x02]) + systolic.to_bytes(2, "little") + bytes.fromhex("50005d00") + stamp


def make(air: VirtualAir, dev: VirtualPeripheral, log: RecordLog, scanner: SharedScanner) -> BleDriver:
    link = Link(
        dev.address,
        dev.profile.subscriptions,
        scanner=scanner,
        clock=RealClock(),
        backend=air.backend(),
        backoff=Backoff(0.01, 0.05),
        scan_timeout=0.5,
        connect_timeout=2,
        records=log,
        drain_timeout=5,
    )
    return BleDriver("meter", "p1", link, RealClock())


def glucose_values(c: Collector) -> list[float]:
    return [round(r.value, 6) for r in c.readings if r.metric == "glucose"]


def test_racp_codec() -> None:
    assert racp.report_all() == bytes.fromhex("0101")
    assert racp.report_from(0x1234) == bytes.fromhex("0103013412")
    assert racp.count_from(5) == bytes.fromhex("0403010500")
    assert racp.parse_response(bytes.fromhex("06000101")).ok
    assert racp.parse_response(bytes.fromhex("06000106")).ok  # no records found
    bad = racp.parse_response(bytes.fromhex("06000104"))
    assert not bad.ok
    assert bad.describe() == "op 0x01: operator not supported"
    assert racp.parse_response(bytes.fromhex("05000300")).count == 3
    assert racp.parse_request(bytes.fromhex("0103010700")).sequence_filter() == 7
    for junk in (b"", b"\x06\x00\x01", b"\x01\x01\x00\x00"):
        with pytest.raises(racp.RacpError):
            racp.parse_response(junk)
    with pytest.raises(ValueError, match="uint16"):
        racp.report_from(0x10000)


def test_glucose_meter_drains_stored_records_once(tmp_path: Path) -> None:
    """N records taken out of range are drained on reconnection; reconnecting again brings nothing new;
    a new record brings exactly that one; the last sequence number survives a gateway restart."""
    state = tmp_path / "meter.json"

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:01:01", "glucose", battery=None)
            await dev.go_away()
            for seq in range(1, 6):  # five measurements while the gateway cannot reach it
                await dev.record(glucose(seq, 90 + seq))
            scanner = SharedScanner(air.backend())
            driver = make(air, dev, RecordLog(state), scanner)
            async with Collector(driver) as got:
                await dev.advertise()
                await got.wait_for(lambda rs: len(glucose_values(got)) == 5)
                await wait_for_async(lambda: driver.link.state.drains == 1)
                assert driver.health()["stored_records"] == 5  # Report number of stored records, all
                assert driver.health()["last_drain"] == "op 0x01: success"

                await dev.drop()  # reconnection: ">= 6" -> no records found
                await wait_for_async(lambda: driver.link.state.drains == 2)
                assert driver.health()["last_drain"] == "op 0x01: no records found"
                assert driver.health()["stored_records"] == 0
                await dev.record(glucose(6, 150))
                await dev.drop()
                await wait_for_async(lambda: driver.link.state.drains == 3)
                await got.wait_for(lambda rs: len(glucose_values(got)) == 6)
            assert glucose_values(got) == [91.0, 92.0, 93.0, 94.0, 95.0, 150.0]
            assert dev.records_sent == 6  # the meter itself was asked only for what was new
            assert json.loads(state.read_text())["last_sequence"] == 6

            # gateway restart: a fresh driver with the persisted state asks for ">= 7"
            driver2 = make(air, dev, RecordLog(state), scanner)
            async with Collector(driver2) as again:
                await wait_for_async(lambda: driver2.link.state.drains == 1)
            assert driver2.health()["last_drain"] == "op 0x01: no records found"
            assert again.readings == []
        finally:
            await air.close()

    run(main)


def test_drop_in_the_middle_of_a_drain_resumes_without_duplicates(tmp_path: Path) -> None:
    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:01:02", "glucose", battery=None)
            for seq in range(10, 18):  # sequence numbers need not start at 1
                await dev.record(glucose(seq, 100 + seq))
            dev.drop_after_records = 3  # out of range after 3 of the 8 records
            driver = make(air, dev, RecordLog(tmp_path / "m.json"), SharedScanner(air.backend()))
            async with Collector(driver) as got:
                await got.wait_for(lambda rs: len(glucose_values(got)) == 8, within_s=20)
                await wait_for_async(lambda: driver.link.state.drains == 1)
            assert glucose_values(got) == [110.0 + i for i in range(8)]
            assert driver.link.state.connects == 2
            assert dev.records_sent == 8  # the second session asked for ">= 13" only
            assert driver.flagged["duplicate"] == 0
        finally:
            await air.close()

    run(main)


def test_resent_records_are_dropped_by_sequence_number(tmp_path: Path) -> None:
    """A meter that ignores the filter (answers ">=" like "all") still yields every record once."""

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:01:03", "glucose", battery=None)
            for seq in (1, 2, 3):
                await dev.record(glucose(seq))
            log = RecordLog(tmp_path / "m.json")
            log.last_sequence = 2  # as if records 1 and 2 had been taken before
            dev._select = lambda request: list(dev.stored)  # type: ignore[method-assign]
            driver = make(air, dev, log, SharedScanner(air.backend()))
            async with Collector(driver) as got:
                await wait_for_async(lambda: driver.link.state.drains == 1)
                await wait_for_async(lambda: driver.flagged["duplicate"] == 2)
            assert len(glucose_values(got)) == 1
        finally:
            await air.close()

    run(main)


def test_cuff_resending_its_memory_is_deduplicated_by_time_and_values(tmp_path: Path) -> None:
    """A BP cuff without RACP re-indicates its whole memory on every connection: each record once, by
    (time stamp, values), across a gateway restart too. Built through device.build like the agent does."""

    async def main() -> None:
        air = VirtualAir()
        try:
            cuff = await air.add("C0:00:00:00:01:04", "blood_pressure", battery=None)
            await cuff.go_away()
            for minute, systolic in ((1, 121), (2, 122), (3, 123)):
                await cuff.record(bpm(minute, systolic))
            await cuff.record(bpm(3, 123))  # a cuff that stored the same record twice
            config = Config.model_validate(
                {
                    "kind": "ble",
                    "id": "cuff",
                    "address": cuff.address,
                    "profile": "blood_pressure",
                    "subject": "p1",
                    "scan_timeout": 0.5,
                    "backoff_initial": 0.01,
                    "backoff_max": 0.05,
                }
            )
            ctx = BuildContext(gateway_id="gw", clock=RealClock(), clock_speed=1.0, data_dir=tmp_path)

            def systolics(c: Collector) -> list[float]:
                return [r.value for r in c.readings if r.metric == "systolic"]

            (driver,) = build(config, ctx, backend=air.backend())
            assert isinstance(driver, BleDriver)
            async with Collector(driver) as got:
                await cuff.advertise()
                await got.wait_for(lambda rs: len(systolics(got)) == 3)
                await wait_for_async(lambda: cuff.records_sent == 4)
                await cuff.record(bpm(4, 124), live=True)
                await got.wait_for(lambda rs: len(systolics(got)) == 4)
                await cuff.drop()  # reconnection: the cuff re-sends all 5
                await wait_for_async(lambda: cuff.records_sent == 9 and driver.flagged["duplicate"] == 1 + 5)
            assert systolics(got) == [121.0, 122.0, 123.0, 124.0]
            assert (tmp_path / "ble-records" / "cuff.json").exists()

            (driver2,) = build(config, ctx, backend=air.backend())
            assert isinstance(driver2, BleDriver)
            async with Collector(driver2) as again:
                await wait_for_async(lambda: driver2.flagged["duplicate"] == 5)
                await asyncio.sleep(0.05)
            assert again.readings == []
        finally:
            await air.close()

    run(main)


def test_virtual_meter_racp_protocol_over_gatt() -> None:
    """The meter's RACP itself, driven by a plain BleakClient: CCCD check, counts, filters, error codes."""
    from bleak import BleakClient
    from bleak.exc import BleakGATTProtocolError

    from drivers.ble import gatt

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:01:05", "glucose", battery=None)
            for seq in (3, 4, 5):
                await dev.record(glucose(seq))
            device = await SharedScanner(air.backend()).find(dev.address, 2)
            async with BleakClient(device, backend=air.backend().client) as client:
                point = client.services.get_characteristic(gatt.uuid128(racp.RACP))
                assert point is not None
                assert {"write", "indicate"} <= set(point.properties)
                with pytest.raises(BleakGATTProtocolError) as refused:  # indications not enabled yet
                    await client.write_gatt_char(point, racp.report_all(), response=True)
                assert refused.value.code == racp.ATT_CCCD_IMPROPERLY_CONFIGURED
                answers: asyncio.Queue[bytes] = asyncio.Queue()
                await client.start_notify(point, lambda _c, data: answers.put_nowait(bytes(data)))

                async def ask(request: bytes) -> bytes:
                    await client.write_gatt_char(point, request, response=True)
                    return await asyncio.wait_for(answers.get(), 2)

                assert await ask(racp.count_all()) == racp.number_of_records(3)
                assert await ask(racp.count_from(5)) == racp.number_of_records(1)
                assert await ask(racp.report_from(6)) == racp.response_code(1, racp.ResponseCode.NO_RECORDS_FOUND)
                assert await ask(bytes([1, 0x09])) == racp.response_code(1, racp.ResponseCode.INVALID_OPERATOR)
                assert await ask(bytes([1, 1, 0])) == racp.response_code(1, racp.ResponseCode.INVALID_OPERAND)
                assert await ask(bytes([1, 3, 2, 0, 0])) == racp.response_code(
                    1, racp.ResponseCode.OPERAND_NOT_SUPPORTED
                )  # filter by User Facing Time: not supported by this meter
                assert await ask(bytes([2, 1])) == racp.response_code(2, racp.ResponseCode.OP_CODE_NOT_SUPPORTED)
        finally:
            await air.close()

    run(main)


def test_operator_not_supported_falls_back_to_all_records(tmp_path: Path) -> None:
    """A meter without ">=": the link asks for all records and the RecordLog keeps only the new one."""

    async def main() -> None:
        air = VirtualAir()
        try:
            dev = await air.add("C0:00:00:00:01:06", "glucose", battery=None)
            for seq in (1, 2, 3):
                await dev.record(glucose(seq))
            original = dev._select

            def no_filters(request: racp.Request) -> list[bytes] | racp.ResponseCode:
                if request.operator == racp.Operator.GREATER_THAN_OR_EQUAL:
                    return racp.ResponseCode.OPERATOR_NOT_SUPPORTED
                return original(request)

            dev._select = no_filters  # type: ignore[method-assign]
            log = RecordLog(tmp_path / "m.json")
            log.last_sequence = 2
            driver = make(air, dev, log, SharedScanner(air.backend()))
            async with Collector(driver) as got:
                await wait_for_async(lambda: driver.link.state.drains == 1 and driver.flagged["duplicate"] == 2)
            assert len(glucose_values(got)) == 1
            assert driver.health()["last_drain"] == "op 0x01: success"
        finally:
            await air.close()

    run(main)
