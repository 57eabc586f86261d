"""PUBACK 0x10 ("no matching subscribers") is not a delivery (issue 20, found by bench/city.py).

After a broker restart Mosquitto 2.0 does not restore the ingesters' $share subscriptions until they subscribe
again; a gateway's batch published meanwhile is answered 0x10. Before, the publisher took any code below 0x80 as
delivered and deleted the row: the data was gone. Here a real Mosquitto has no subscriber at first, then one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.db import connect
from kyojo.contract.vocab import reading
from provisioning.local import Mosquitto
from tests.agentkit import T0, Collector, agent_config, consenting_agent
from tests.kit import wait_for

pytestmark = pytest.mark.broker


def _queued(config: object) -> list[int]:
    conn = connect(config.db_path)  # type: ignore[attr-defined]
    try:
        return [int(s) for (s,) in conn.execute("SELECT seq FROM outbox WHERE topic LIKE '%/agg/%' ORDER BY seq")]
    finally:
        conn.close()


def test_a_batch_nobody_subscribed_to_stays_queued_until_someone_does(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = agent_config(tmp_path / "data", fresh_mosquitto.port, gateway="gw-0x10")
    agent, clock = consenting_agent(config)
    for i in range(0, 1800, 5):
        agent._on_reading(reading("strap", "p1", "heart_rate", 70.0, T0 + i))
    clock.t = T0 + 1800 + 120
    agent.flush()
    queued = _queued(config)
    assert queued
    pub = agent.publisher
    collector = None
    try:
        pub.start()
        wait_for(lambda: pub.stats.unrouted >= len(queued), 30, "the broker to answer 0x10 for every batch")
        assert _queued(config) == queued and pub.stats.aggregates_sent == 0  # nothing taken as sent
        collector = Collector(fresh_mosquitto.port, "kyojo/v1/gw-0x10/agg/#", client_id="late-ingester")
        wait_for(lambda: not _queued(config), 30, "the batches to be sent again and acknowledged")
        wait_for(lambda: len(collector.messages) >= len(queued), 30, "the subscriber to get them")
        assert len(collector.messages) == len(queued)  # each once
        # the publisher thread counts a settled round after its transaction commits: wait for the count, too
        wait_for(lambda: pub.stats.aggregates_sent > 0, 30, "the publisher to count the batches as sent")
    finally:
        pub.stop()
        if collector is not None:
            collector.close()
        agent.conn.close()
