"""``PlugsDriver``: subscribes to the gateway's LAN-side Mosquitto and yields the plugs' Readings.

paho-mqtt 2.x runs its network loop in its own thread (``loop_start``) and reconnects by itself; each
(re)connection subscribes again (clean session), and messages cross into asyncio through
``call_soon_threadsafe``. Plugs speak MQTT 3.1.1 (Tasmota, Shelly Gen1, Zigbee2MQTT); so does this client.

Subscriptions: Tasmota ``tele/+/+``, ``stat/+/+`` (default FullTopic ``%prefix%/%topic%/``) and
``tasmota/discovery/+/config``; Shelly Gen1 ``shellies/#``; Shelly Gen2+ ``+/events/rpc``, ``+/status/+``,
``+/online``; Zigbee2MQTT ``<base>/#``; plus ``extra_topics`` for custom FullTopics or Shelly topic prefixes.

Counters and discovery records are saved to ``state_path`` (JSON, written to a temporary file, fsynced, renamed,
directory fsynced) on stop and at most every ``save_every_s``, so a restart neither re-counts energy nor forgets
which plugs announced themselves, and a power cut leaves the old file or the new one. The file stays small:
:class:`~drivers.plugs.session.PlugSession` remembers at most 256 unpaired plugs.

Only paired plugs produce Readings (see :mod:`drivers.plugs.session`); the broker itself should refuse anonymous
clients and let each plug write only its own topics (:mod:`drivers.plugs.broker`, docs/LAN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.logs import LogLimiter
from drivers.plugs.pairing import write_durably
from drivers.plugs.session import PlugSession
from kyojo.contract.vocab import Clock, Reading

log = logging.getLogger(__name__)

#: Most messages held between paho's thread and the agent; beyond that the oldest are dropped (and counted).
QUEUE_LIMIT = 10_000


def default_topics(z2m_base: str = "zigbee2mqtt") -> list[str]:
    """The subscriptions for every supported family (see the module docstring)."""
    return [
        "tele/+/+",
        "stat/+/+",
        "tasmota/discovery/+/config",
        "shellies/#",
        "+/events/rpc",
        "+/status/+",
        "+/online",
        f"{z2m_base}/#",
    ]


class PlugsDriver:
    """All plugs of one household on one local broker."""

    def __init__(
        self,
        device_id: str,
        session: PlugSession,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        topics: Sequence[str] | None = None,
        clock: Clock | None = None,
        state_path: Path | None = None,
        save_every_s: float = 60.0,
    ) -> None:
        self.device_id = device_id
        self.session = session
        self.host, self.port = host, port
        self._username, self._password = username, password
        self.topics = list(topics) if topics is not None else default_topics(session.z2m_base)
        self.clock = clock
        self.state_path = state_path
        self.save_every_s = save_every_s
        self.subscribed = threading.Event()
        self.connected = False
        self.connects = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._log_limited = LogLimiter(log)  # paho's thread
        self._queue: asyncio.Queue[tuple[str, bytes, float]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if state_path is not None:
            self._load_state(state_path)

    # -- persistence ------------------------------------------------------------------------------------
    def _load_state(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable plug state %s: %s", path, err.__class__.__name__)
            return
        if isinstance(doc, dict) and isinstance(doc.get("counters"), dict):
            self.session.restore_counters(doc["counters"])
        if isinstance(doc, dict) and isinstance(doc.get("seen"), list):
            self.session.restore_seen(doc["seen"])

    def save_state(self) -> None:
        """Write counters and the plugs seen to ``state_path`` atomically and durably (what ``pair plugs`` reads)."""
        if self.state_path is None:
            return
        doc = {
            "driver": self.device_id,
            "saved_at": time.time(),
            "counters": self.session.counters_state(),
            "seen": [s.to_dict() for s in self.session.records()],
        }
        write_durably(self.state_path, json.dumps(doc, indent=1).encode("utf-8"))

    # -- paho callbacks (paho's thread) -----------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            self._log_limited(
                logging.WARNING, "connect", "%s: the LAN broker refused the login: %s", self.device_id, reason
            )
            return
        self.connected = True
        self.connects += 1
        client.subscribe([(t, 0) for t in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, _codes: Any, _p: Any) -> None:
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        self.subscribed.clear()
        if reason.is_failure:
            self.last_error = f"disconnected: {reason}"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        item = (msg.topic, bytes(msg.payload), time.time())
        with contextlib.suppress(RuntimeError):  # the loop closed while stopping
            loop.call_soon_threadsafe(self._put, queue, item)

    def _put(self, queue: asyncio.Queue[tuple[str, bytes, float]], item: tuple[str, bytes, float]) -> None:
        if queue.full():
            queue.get_nowait()
            self.dropped += 1
        queue.put_nowait(item)

    # -- Driver -----------------------------------------------------------------------------------------
    async def readings(self) -> AsyncGenerator[Reading, None]:
        """Connect, subscribe, and yield mapped readings until cancelled (paho reconnects on its own)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(QUEUE_LIMIT)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kyojo-plugs-{self.device_id}-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        else:
            log.warning(
                "%s: no username for the LAN broker %s:%s; a broker that lets anyone in lets anyone on the LAN "
                "publish a plug's readings (docs/LAN.md)",
                self.device_id,
                self.host,
                self.port,
            )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        last_save = time.monotonic()
        try:
            while True:
                topic, payload, received = await self._queue.get()
                received = self.clock.now() if self.clock is not None else received
                for r in self.session.feed(topic, payload, received):
                    yield r
                if self.state_path is not None and time.monotonic() - last_save > self.save_every_s:
                    self.save_state()
                    last_save = time.monotonic()
        finally:
            client.disconnect()
            client.loop_stop()
            self.connected = False
            self.subscribed.clear()
            self._loop = self._queue = None
            self.save_state()

    def health(self) -> Mapping[str, object]:
        """Connection, counters, parse errors by reason, per-plug states, and plugs waiting to be paired."""
        s = self.session
        return {
            "device": self.device_id,
            "kind": "plugs",
            "ok": self.connected,
            "broker": f"{self.host}:{self.port}",
            "connects": self.connects,
            "messages": s.messages,
            "readings_emitted": s.readings_out,
            "dropped": self.dropped,
            "parse_errors": dict(s.errors),
            "ignored": dict(s.ignored),
            "counters": s.counter_causes(),
            "last_error": self.last_error or s.last_error,
            "states": {k: dict(v) for k, v in s.states.items()},
            "unpaired": [u.device for u in s.unpaired()],
        }
