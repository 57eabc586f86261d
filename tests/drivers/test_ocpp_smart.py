"""Commands toward a charger (a real ``ocpp`` ChargePoint answering them) and the solar-surplus limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp import routing
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from drivers.ocpp.server import CentralSystem
from drivers.ocpp.sessions import SessionStore
from drivers.ocpp.smart import SurplusPolicy, surplus_limits, tx_profile


def on(action: Action) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The library's ``@on``, typed."""
    decorator: Callable[[Callable[..., Any]], Callable[..., Any]] = routing.on(action)
    return decorator


class Wallbox(ChargePoint):  # type: ignore[misc]
    """A charge point that accepts what the central system asks and remembers it."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.got: list[tuple[str, dict[str, Any]]] = []

    @on(Action.remote_start_transaction)
    def remote_start(self, **kw: Any) -> Any:
        self.got.append(("start", kw))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def remote_stop(self, **kw: Any) -> Any:
        self.got.append(("stop", kw))
        return call_result.RemoteStopTransaction(status="Accepted")

    @on(Action.change_configuration)
    def change_configuration(self, **kw: Any) -> Any:
        self.got.append(("config", kw))
        return call_result.ChangeConfiguration(status="RebootRequired")

    @on(Action.set_charging_profile)
    def set_charging_profile(self, **kw: Any) -> Any:
        self.got.append(("profile", kw))
        return call_result.SetChargingProfile(status="Accepted")


def test_commands_reach_a_real_charge_point(tmp_path: Path) -> None:
    async def main() -> None:
        with SessionStore(tmp_path / "s.db") as store:
            key = "wallbox-authorization-key"
            cs = CentralSystem(store, subject="home1", allow={"WB1"}, credentials={"WB1": key})
            port = await cs.start("127.0.0.1", 0)
            try:
                url = f"ws://127.0.0.1:{port}/ocpp/WB1"
                auth = {"Authorization": "Basic " + base64.b64encode(f"WB1:{key}".encode()).decode()}
                ocpp16 = [Subprotocol("ocpp1.6")]
                async with websockets.connect(url, subprotocols=ocpp16, additional_headers=auth) as ws:
                    cp = Wallbox("WB1", ws)
                    task = asyncio.create_task(cp.start())
                    await asyncio.sleep(0.05)
                    assert await cs.remote_start("WB1", "TAG1", 1) == "Accepted"
                    assert await cs.remote_stop("WB1", 7) == "Accepted"
                    assert await cs.change_configuration("WB1", "MeterValueSampleInterval", "60") == "RebootRequired"
                    assert await cs.set_charging_profile("WB1", 1, tx_profile(7, 9.87)) == "Accepted"
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await task
                assert [k for k, _ in cp.got] == ["start", "stop", "config", "profile"]
                profile = cp.got[3][1]["cs_charging_profiles"]
                assert profile["charging_profile_purpose"] == "TxProfile" and profile["transaction_id"] == 7
                (period,) = profile["charging_schedule"]["charging_schedule_period"]
                assert (period["start_period"], float(period["limit"])) == (0, 9.8)  # 1.6: one decimal
                with pytest.raises(LookupError):
                    await cs.remote_stop("NOBODY", 1)
            finally:
                await cs.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_surplus_limits_floor_hysteresis_override() -> None:
    p = SurplusPolicy(phases=1, voltage_v=230, floor_a=6, max_a=16, hysteresis_a=1)
    surplus = [0, 1380, 1600, 1700, 2300, 2400, 2600, 1300, 5000, -200, float("nan")]  # W
    got = surplus_limits(surplus, p)
    # 1380 W = 6 A: not enough to resume (needs 7 A); 1700 W = 7.3 A resumes; +0.4 A is below the hysteresis;
    # 2600 W = 11.3 A changes; 1300 W < floor pauses; 5000 W caps at 16 A; negative and NaN pause.
    assert got == [0.0, 0.0, 0.0, 7.3, 10.0, 10.0, 11.3, 0.0, 16.0, 0.0, 0.0]
    kept = surplus_limits([0, 1700, 500], SurplusPolicy(keep_floor=True))
    assert kept == [6.0, 7.3, 6.0]
    assert surplus_limits([5000, 0], p, override_a=8) == [8.0, 8.0]
    assert surplus_limits([5000], p, override_a=3) == [6.0]  # an override below the floor charges at the floor
    assert surplus_limits([5000], p, override_a=0) == [0.0]
    assert surplus_limits([3 * 230 * 8], SurplusPolicy(phases=3)) == [8.0]
    with pytest.raises(ValueError, match="phases"):
        SurplusPolicy(phases=2)
