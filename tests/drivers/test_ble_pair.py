"""``kyojo pair`` over real GATT and SMP: typer's CliRunner drives the commands, whose bleak calls reach
virtual Bumble peripherals (real advertising, LE connections, service discovery, CCCD writes, SMP pairing).

The only substitution is :data:`drivers.ble.pair.backend_factory`, which yields the virtual radio's bleak
backend instead of BlueZ's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drivers.ble import pair, paired
from drivers.ble.device import build
from drivers.ble.driver import BleDriver
from drivers.ble.transport import BleBackend
from drivers.registry import BuildContext
from drivers.sim.virtual_ble import VirtualAir
from edge_agent.cli import pairing_site
from tests.drivers.test_ble_records import glucose, glucose_values
from tests.drivers.test_ble_transport import Collector, RealClock, run
from tests.kit import wait_for_async

pair.use_site_loader(pairing_site)  # what the agent's CLI does when it mounts `kyojo pair`

METER = "C0:00:00:00:02:01"
STRAP = "C0:00:00:00:02:02"
CUFF = "C0:00:00:00:02:03"


@dataclass
class Radio:
    """What the virtual radio of the next command holds."""

    devices: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    powered: bool = True
    airs: list[VirtualAir] = field(default_factory=list)


@pytest.fixture
def radio(monkeypatch: pytest.MonkeyPatch) -> Radio:
    state = Radio()

    @contextlib.asynccontextmanager
    async def factory() -> AsyncIterator[BleBackend | None]:
        air = VirtualAir()
        state.airs.append(air)
        try:
            for address, profile, kw in state.devices:
                await air.add(address, profile, **kw)  # type: ignore[arg-type]
            air.powered = state.powered
            yield air.backend()
        finally:
            await air.close()

    monkeypatch.setattr(pair, "backend_factory", factory)
    return state


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nid = "home-1"\ndata_dir = "data"\n', encoding="utf-8")
    return path


def cli(config: Path, *args: str) -> Any:
    return CliRunner().invoke(pair.app, [*args, "--config", str(config)])


def test_scan_lists_nearby_health_devices(radio: Radio, gateway: Path) -> None:
    radio.devices = [(METER, "glucose", {"name": "Meter"}), (STRAP, "heart_rate", {"name": "Strap"})]
    out = cli(gateway, "scan", "--timeout", "0.3", "--json")
    assert out.exit_code == 0, out.output
    rows = {r["address"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {METER, STRAP}
    assert rows[METER]["name"] == "Meter"
    assert rows[METER]["profiles"] == ["glucose"]
    assert "00001808-0000-1000-8000-00805f9b34fb" in rows[METER]["services"]
    assert isinstance(rows[STRAP]["rssi"], int)
    table = cli(gateway, "scan", "--timeout", "0.3")
    assert table.exit_code == 0
    assert "Strap" in table.stdout
    assert "heart_rate" in table.stdout


def test_add_bonds_a_meter_that_requires_it_and_lists_and_removes(radio: Radio, gateway: Path) -> None:
    radio.devices = [
        (METER, "glucose", {"name": "Meter", "security": "bond"}),
        (STRAP, "heart_rate", {"name": "Strap"}),
    ]
    out = cli(gateway, "add", METER.lower(), "--person", "alice", "--timeout", "2")
    assert out.exit_code == 0, out.output
    assert "(bonded)" in out.stdout

    out = cli(gateway, "add", STRAP, "--person", "bob", "--profile", "heart_rate", "--id", "bob-strap")
    assert out.exit_code == 0, out.output
    assert "no bonding needed" in out.stdout

    data_dir = gateway.parent / "data"
    raw = json.loads((data_dir / "ble-devices.json").read_text())
    assert raw["version"] == 1
    assert [(d["id"], d["address"], d["profile"], d["subject"], d["bonded"]) for d in raw["devices"]] == [
        ("glucose-alice", METER, "glucose", "alice", True),
        ("bob-strap", STRAP, "heart_rate", "bob", False),
    ]
    configs = paired.device_configs(data_dir)
    assert [(c.id, c.subject, c.profile, c.kind) for c in configs] == [
        ("glucose-alice", "alice", "glucose", "ble"),
        ("bob-strap", "bob", "heart_rate", "ble"),
    ]

    listed = cli(gateway, "list", "--json")
    assert [d["id"] for d in json.loads(listed.stdout)] == ["glucose-alice", "bob-strap"]
    assert "alice" in cli(gateway, "list").stdout

    again = cli(gateway, "add", METER, "--person", "carol")
    assert again.exit_code == pair.EXIT_USAGE
    assert "already paired as glucose-alice" in again.stderr

    gone = cli(gateway, "remove", METER)
    assert gone.exit_code == 0, gone.output
    assert [d.id for d in paired.load(data_dir)] == ["bob-strap"]
    missing = cli(gateway, "remove", METER)
    assert missing.exit_code == pair.EXIT_NOT_FOUND


@pytest.mark.parametrize(
    ("device", "args", "code", "message"),
    [
        (
            (STRAP, "heart_rate", {}),
            ["--profile", "blood_pressure"],
            pair.EXIT_WRONG_PROFILE,
            "is not a blood_pressure",
        ),
        ((CUFF, "blood_pressure", {}), [], pair.EXIT_NOT_FOUND, "was not seen within 0.3 s"),
        (
            (METER, "glucose", {"security": "bond", "pairing_mode": False}),
            [],
            pair.EXIT_PAIRING_REFUSED,
            "pairing mode",
        ),
        ((METER, "glucose", {"security": "bond"}), ["--bond", "never"], pair.EXIT_PAIRING_REFUSED, "--bond"),
    ],
    ids=["wrong-profile", "not-found", "not-in-pairing-mode", "bond-needed"],
)
def test_add_failures_are_explained(
    radio: Radio, gateway: Path, device: tuple[str, str, dict[str, Any]], args: list[str], code: int, message: str
) -> None:
    radio.devices = [device]
    target = STRAP if device[0] == STRAP else METER
    out = cli(gateway, "add", target, "--person", "alice", "--timeout", "0.3", *args)
    assert out.exit_code == code, out.output
    assert message in out.stderr
    assert paired.load(gateway.parent / "data") == []


def test_adapter_off_and_bad_arguments(radio: Radio, gateway: Path) -> None:
    radio.devices = [(STRAP, "heart_rate", {})]
    radio.powered = False
    for args in (["scan", "--timeout", "0.2"], ["add", STRAP, "--person", "alice"]):
        out = cli(gateway, *args)
        assert out.exit_code == pair.EXIT_NO_ADAPTER, out.output
        assert "Bluetooth is switched on" in out.stderr
    assert cli(gateway, "add", "nope", "--person", "alice").exit_code == pair.EXIT_USAGE
    assert cli(gateway, "add", STRAP, "--person", "Alice Smith").exit_code == pair.EXIT_USAGE
    assert cli(gateway, "add", STRAP, "--person", "a", "--profile", "toaster").exit_code == pair.EXIT_USAGE
    out = CliRunner().invoke(pair.app, ["list", "--config", str(gateway.parent / "missing.toml")])
    assert out.exit_code == pair.EXIT_USAGE
    assert "config file not found" in out.stderr


def test_paired_device_is_read_by_the_agent_driver_over_the_bond(tmp_path: Path) -> None:
    """Pair a bond-only meter, then build its driver from the registry as the agent does: the link
    re-encrypts with the stored keys, subscribes and drains the meter's stored records over RACP."""

    async def main() -> None:
        air = VirtualAir()
        try:
            meter = await air.add(METER, "glucose", name="Meter", security="bond", battery=None)
            for seq in (1, 2, 3):
                await meter.record(glucose(seq, 100 + seq))
            added = await pair.add_device(air.backend(), METER, None, find_within=10)
            assert (added.profile, added.bonded) == ("glucose", True)
            paired.save(tmp_path, [paired.PairedDevice(id="m", address=METER, profile="glucose", subject="alice")])
            (config,) = paired.device_configs(tmp_path, scan_timeout=0.5, backoff_initial=0.01, backoff_max=0.05)
            ctx = BuildContext(gateway_id="gw", clock=RealClock(), clock_speed=1.0, data_dir=tmp_path)
            (driver,) = build(config, ctx, backend=air.backend())
            assert isinstance(driver, BleDriver)
            async with Collector(driver) as got:
                await got.wait_for(lambda rs: len(glucose_values(got)) == 3)
                await wait_for_async(lambda: driver.link.state.drains == 1)
            assert {r.subject for r in got.readings} == {"alice"}
            assert driver.health()["last_error"] is None

            # without the bond the same meter refuses the gateway (Insufficient Encryption on the CCCD)
            assert await air.is_bonded(METER)
            assert await pair.forget_bond(air.backend(), METER) is None
            assert not await air.is_bonded(METER)
            (driver2,) = build(config, ctx, backend=air.backend())
            assert isinstance(driver2, BleDriver)
            async with Collector(driver2):
                await wait_for_async(lambda: "Insufficient Encryption" in str(driver2.health()["last_error"]))
        finally:
            await air.close()

    run(main)


def test_pair_speaks_japanese_when_the_household_does(radio: Radio, gateway: Path) -> None:
    """Issue 22 item 5: LANG=ja_JP.UTF-8 gives Japanese words, the stack's own detail in brackets."""
    ja = {"LANG": "ja_JP.UTF-8"}
    radio.devices = [(STRAP, "heart_rate", {"name": "Strap"})]
    table = CliRunner().invoke(pair.app, ["scan", "--timeout", "0.3", "--config", str(gateway)], env=ja)
    assert table.exit_code == 0 and "アドレス" in table.stdout and "Strap" in table.stdout
    out = CliRunner().invoke(pair.app, ["add", STRAP, "--person", "p1", "--config", str(gateway)], env=ja)
    assert out.exit_code == 0 and "として登録しました" in out.stdout and "p1 の heart_rate" in out.stdout
    missing = CliRunner().invoke(
        pair.app, ["add", METER, "--person", "p1", "--timeout", "0.3", "--config", str(gateway)], env=ja
    )
    assert missing.exit_code == pair.EXIT_NOT_FOUND
    assert "機器が見つかりません" in missing.stderr and "error:" not in missing.stderr
    gone = CliRunner().invoke(pair.app, ["remove", STRAP, "--config", str(gateway)], env=ja)
    assert gone.exit_code == 0 and "削除しました" in gone.stdout
