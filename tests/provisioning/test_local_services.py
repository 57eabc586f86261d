"""The local service harness against the real Mosquitto and InfluxDB binaries."""

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from provisioning import local
from provisioning.local import InfluxDB, InfluxDBError, LocalStack, Mosquitto, ServiceError, free_port

# ------------------------------------------------------------------------------------------------------------
# MQTT helpers
# ------------------------------------------------------------------------------------------------------------


class _Client:
    """A connected paho (MQTT v5) client whose received messages land in a queue."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        rc, _mid = self.client.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert done.wait(5), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        info.wait_for_publish(5)
        assert info.is_published(), "no PUBACK"

    def next_message(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)


@contextmanager
def mqtt_client(broker: Mosquitto, client_id: str, *, session_expiry: int | None = None) -> Iterator[_Client]:
    """Connect (clean start unless ``session_expiry`` asks for a persistent session), yield, disconnect."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    wrapper = _Client(client)
    connected = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        assert not reason.is_failure, reason
        connected.set()

    client.on_connect = on_connect
    client.on_message = lambda _c, _u, msg: wrapper.messages.put(msg)
    props = None
    if session_expiry is not None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
    client.connect(broker.host, broker.port, clean_start=session_expiry is None, properties=props)
    client.loop_start()
    try:
        assert connected.wait(5), "no CONNACK"
        yield wrapper
    finally:
        client.disconnect()
        client.loop_stop()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------------------------
# free_port / ensure_installed
# ------------------------------------------------------------------------------------------------------------


def test_free_port_returns_distinct_bindable_ports() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) >= 19  # the kernel may hand the same free port out twice; almost never does
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_missing_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(local._BINARIES, "mosquitto", ("mosquitto", (str(tmp_path / "nope"),)))
    with pytest.raises(ServiceError, match="apt-get install mosquitto"):
        local.ensure_installed(["mosquitto"])
    with pytest.raises(ServiceError, match="apt-get install mosquitto"):
        Mosquitto(tmp_path / "m").start()


def test_installed_binaries_are_found() -> None:
    local.ensure_installed()


# ------------------------------------------------------------------------------------------------------------
# Mosquitto
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_mosquitto_qos1_roundtrip(mosquitto: Mosquitto) -> None:
    topic = _unique("test/roundtrip")
    with mqtt_client(mosquitto, _unique("sub")) as sub, mqtt_client(mosquitto, _unique("pub")) as pub:
        sub.subscribe(topic)
        pub.publish(topic, b"hello")
        msg = sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello", 1)


@pytest.mark.broker
def test_mosquitto_files_and_config(mosquitto: Mosquitto) -> None:
    conf = mosquitto.conf_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1" in conf
    assert "max_queued_messages 0" in conf
    assert "persistence true" in conf
    assert mosquitto.running
    assert mosquitto.pid is not None
    assert "running" in mosquitto.log_path.read_text()


@pytest.mark.broker
def test_mosquitto_start_stop_is_idempotent(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.stop()  # never started: no-op
    with broker:
        port, pid = broker.port, broker.pid
        broker.start()  # already running: no-op
        assert broker.pid == pid
    assert not broker.running
    assert broker.pid is None
    assert broker.port == port


@pytest.mark.broker
def test_restart_keeps_queued_message_of_persistent_session(fresh_mosquitto: Mosquitto) -> None:
    topic, sub_id = _unique("test/persist"), _unique("sub")
    with mqtt_client(fresh_mosquitto, sub_id, session_expiry=3600) as sub:
        sub.subscribe(topic)
    with mqtt_client(fresh_mosquitto, _unique("pub")) as pub:  # subscriber offline: the broker queues
        pub.publish(topic, b"queued")

    port = fresh_mosquitto.port
    fresh_mosquitto.restart()
    assert fresh_mosquitto.port == port

    with mqtt_client(fresh_mosquitto, sub_id, session_expiry=3600) as sub:
        msg = sub.next_message()
    assert (msg.topic, msg.payload) == (topic, b"queued")


@pytest.mark.broker
def test_kill_after_autosave_keeps_queued_message(fresh_mosquitto: Mosquitto) -> None:
    topic, sub_id = _unique("test/kill"), _unique("sub")
    with mqtt_client(fresh_mosquitto, sub_id, session_expiry=3600) as sub:
        sub.subscribe(topic)
    db_file = fresh_mosquitto.data_dir / "mosquitto.db"
    with mqtt_client(fresh_mosquitto, _unique("pub")) as pub:
        pub.publish(topic, b"survives")
        # Mosquitto is single-threaded: a save that lands after our PUBACK includes the message.
        before = db_file.stat().st_mtime_ns if db_file.exists() else 0
    deadline = time.monotonic() + 5  # autosave_interval is 1 s
    while not (db_file.exists() and db_file.stat().st_mtime_ns != before):
        assert time.monotonic() < deadline, "no autosave within 5 s"
        time.sleep(0.05)
    fresh_mosquitto.kill()
    assert not fresh_mosquitto.running
    fresh_mosquitto.start()
    with mqtt_client(fresh_mosquitto, sub_id, session_expiry=3600) as sub:
        assert sub.next_message().payload == b"survives"


@pytest.mark.broker
def test_bounded_queue_drops_and_logs_it(tmp_path: Path) -> None:
    """Mosquitto acks the publisher, then drops beyond max_queued_messages: one log line per episode."""
    topic, sub_id = _unique("test/drop"), _unique("sub")
    with Mosquitto(tmp_path, max_queued_messages=5) as broker:
        assert broker.dropped_messages() == 0
        with mqtt_client(broker, sub_id, session_expiry=3600) as sub:
            sub.subscribe(topic)
        with mqtt_client(broker, _unique("pub")) as pub:
            for i in range(20):
                pub.publish(topic, str(i).encode())  # every one gets its PUBACK
        with mqtt_client(broker, sub_id, session_expiry=3600) as sub:
            got = [sub.next_message().payload for _ in range(5)]
            with pytest.raises(queue.Empty):
                sub.next_message(timeout=0.5)
        assert got == [str(i).encode() for i in range(5)]
        assert broker.dropped_messages() == 1  # 15 messages lost, a single log line


@pytest.mark.broker
@pytest.mark.influx
def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = Mosquitto(tmp_path / "m", port)
        with pytest.raises(ServiceError, match="Address already in use") as excinfo:
            broker.start(timeout=5)
        assert str(broker.log_path) in str(excinfo.value)
        assert not broker.running

        influx = InfluxDB(tmp_path / "i", port)
        with pytest.raises(ServiceError, match="address already in use"):
            influx.start(timeout=10)
        assert not influx.running


# ------------------------------------------------------------------------------------------------------------
# InfluxDB
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.influx
def test_influx_write_query_roundtrip(influxdb: InfluxDB, influx_db: str) -> None:
    influxdb.write_lines(
        "env,site=a,kind=x last=21.5,count=3i 1700000000000\nenv,site=b last=7 1700000001000", influx_db
    )
    rows = influxdb.query_rows("SELECT * FROM env GROUP BY site", influx_db)
    assert rows == [
        {"_measurement": "env", "site": "a", "time": 1700000000000, "count": 3, "kind": "x", "last": 21.5},
        {"_measurement": "env", "site": "b", "time": 1700000001000, "count": None, "kind": None, "last": 7},
    ]
    assert influxdb.count("env", influx_db) == 2
    assert influxdb.count("/^en/", influx_db) == 2
    assert influxdb.count("env", influx_db, field="count") == 1
    raw = influxdb.query("SELECT last FROM env", influx_db, epoch="s")
    assert raw[0]["series"][0]["values"] == [[1700000000, 21.5], [1700000001, 7]]


@pytest.mark.influx
def test_influx_rewrite_is_idempotent(influxdb: InfluxDB, influx_db: str) -> None:
    line = "agg,subject=s1,metric=heart_rate last={v} 1700000000000"
    influxdb.write_lines(line.format(v=60), influx_db)
    influxdb.write_lines(line.format(v=61).encode(), influx_db)
    assert influxdb.count("agg", influx_db) == 1
    assert [r["last"] for r in influxdb.query_rows("SELECT last FROM agg", influx_db)] == [61]


@pytest.mark.influx
def test_influx_errors_are_raised(influxdb: InfluxDB, influx_db: str) -> None:
    with pytest.raises(InfluxDBError, match="HTTP 400") as excinfo:
        influxdb.write_lines("not line protocol", influx_db)
    assert excinfo.value.status == 400
    with pytest.raises(InfluxDBError, match="database not found"):
        influxdb.write_lines("m v=1 1", "no_such_db")
    with pytest.raises(InfluxDBError, match="error parsing query"):
        influxdb.query("SELEC nonsense", influx_db)


@pytest.mark.influx
def test_influx_restart_keeps_data(tmp_path: Path) -> None:
    with InfluxDB(tmp_path) as server:
        server.create_database("d")
        server.write_lines("m v=1 1000\nm v=2 2000", "d")
        url = server.url
        server.restart()
        assert server.url == url
        assert server.count("m", "d", field="v") == 2
        server.kill()
        server.start()
        assert server.count("m", "d", field="v") == 2  # the WAL is replayed


@pytest.mark.broker
@pytest.mark.influx
def test_local_stack(tmp_path: Path) -> None:
    with LocalStack(tmp_path) as stack:
        assert stack.running
        stack.influxdb.create_database("demo")
        topic = _unique("test/stack")
        with (
            mqtt_client(stack.mosquitto, _unique("sub")) as sub,
            mqtt_client(stack.mosquitto, _unique("p")) as pub,
        ):
            sub.subscribe(topic)
            pub.publish(topic, b"x")
            assert sub.next_message().payload == b"x"
    assert not stack.mosquitto.running
    assert not stack.influxdb.running
    assert (tmp_path / "mosquitto" / "mosquitto.conf").is_file()
    assert (tmp_path / "influxdb" / "influxdb.conf").is_file()
