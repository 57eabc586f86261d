"""``PlugsDriver``: subscribes to the gateway's LAN-side Mosquitto and yields the plugs' Readings.

The client is aiomqtt (paho's codec driven by the agent's own event loop: no thread, nothing crosses into asyncio
by ``call_soon_threadsafe``). Each connection is a clean session that subscribes again; when the broker goes away
the driver reconnects with exponential backoff and full jitter (:mod:`kyojo.runtime.backoff`, 1 s to 30 s), as
every Kyojo retry loop does. Plugs speak MQTT 3.1.1 (Tasmota, Shelly Gen1, Zigbee2MQTT); so does this client.

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
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path

import aiomqtt

from drivers.logs import LogLimiter
from drivers.plugs.pairing import write_durably
from drivers.plugs.session import PlugSession
from kyojo.contract.vocab import Clock, Reading
from kyojo.runtime.backoff import Backoff
from kyojo.runtime.cancel import honour_cancellation

log = logging.getLogger(__name__)

#: Most messages held between the MQTT client and the agent; beyond that the oldest are dropped (and counted).
QUEUE_LIMIT = 10_000
#: reconnect delays: the ceiling starts at 1 s and doubles up to 30 s (what paho's own loop used), fully jittered
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0


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


def _drop_oldest(on_drop: Callable[[], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt's incoming messages that, when full, drops the oldest (a plug's newest report is
    the one worth keeping) and calls ``on_drop``; aiomqtt's own bounded queue would drop the newest, uncounted."""

    class DropOldest(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            if self.full():
                self.get_nowait()
                on_drop()
            super().put_nowait(item)

    return DropOldest


def _payload(message: aiomqtt.Message) -> bytes:
    p = message.payload
    if isinstance(p, (bytes, bytearray)):
        return bytes(p)
    return b"" if p is None else str(p).encode("utf-8")


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
        pairing: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.device_id = device_id
        #: reads the pairing table again (the household's plugs and the config's), for :meth:`refresh_pairing`
        self._pairing = pairing
        self.session = session
        self.host, self.port = host, port
        self._username, self._password = username, password
        self.topics = list(topics) if topics is not None else default_topics(session.z2m_base)
        self.clock = clock
        self.state_path = state_path
        self.save_every_s = save_every_s
        #: set once the broker acknowledged the subscriptions (a threading.Event: a test thread may wait on it)
        self.subscribed = threading.Event()
        self.connected = False
        self.connects = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._log_limited = LogLimiter(log)
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

    # -- Driver -----------------------------------------------------------------------------------------
    def _count_drop(self) -> None:
        self.dropped += 1

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=f"kyojo-plugs-{self.device_id}-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=30,
            queue_type=_drop_oldest(self._count_drop),
            max_queued_incoming_messages=QUEUE_LIMIT,
            logger=log,
        )

    def _lost(self, err: aiomqtt.MqttError, *, joined: bool) -> None:
        if not joined and isinstance(err, aiomqtt.MqttCodeError):  # a negative CONNACK
            self.last_error = f"connect refused: {err}"
            self._log_limited(
                logging.WARNING, "connect", "%s: the LAN broker refused the login: %s", self.device_id, err
            )
        else:
            self.last_error = f"disconnected: {err}" if joined else f"cannot connect: {err}"
            self._log_limited(
                logging.INFO, "link", "%s: LAN broker %s:%s: %s", self.device_id, self.host, self.port, err
            )

    async def readings(self) -> AsyncGenerator[Reading, None]:
        """Connect, subscribe, and yield mapped readings until cancelled; reconnects with backoff."""
        if self._username is None:
            log.warning(
                "%s: no username for the LAN broker %s:%s; a broker that lets anyone in lets anyone on the LAN "
                "publish a plug's readings (docs/LAN.md)",
                self.device_id,
                self.host,
                self.port,
            )
        backoff = Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S)
        last_save = time.monotonic()
        try:
            while True:
                # 3.11's wait_for inside aiomqtt's connect can swallow a cancellation that lands with the CONNACK
                honour_cancellation()
                joined = False
                try:
                    async with self._client() as client:
                        joined = self.connected = True
                        self.connects += 1
                        await client.subscribe([(t, 0) for t in self.topics])
                        self.subscribed.set()
                        backoff.reset()
                        async for message in client.messages:
                            received = self.clock.now() if self.clock is not None else time.time()
                            for r in self.session.feed(str(message.topic), _payload(message), received):
                                yield r
                            if self.state_path is not None and time.monotonic() - last_save > self.save_every_s:
                                self.save_state()
                                last_save = time.monotonic()
                except aiomqtt.MqttError as err:
                    self._lost(err, joined=joined)
                finally:
                    self.connected = False
                    self.subscribed.clear()
                await asyncio.sleep(backoff.next())
        finally:
            self.save_state()

    def refresh_pairing(self) -> dict[str, list[str]]:
        """Apply the household's pairing changes now, without a restart or a reconnect (the agent calls this when
        ``plug-appliances.json`` changed; :meth:`PlugSession.set_appliances` says what moves). The changed keys."""
        if self._pairing is None:
            return {}
        changes = self.session.set_appliances(self._pairing())
        if any(changes.values()):
            log.info(
                "%s: pairing applied: %s",
                self.device_id,
                "; ".join(f"{what} {', '.join(keys)}" for what, keys in changes.items() if keys),
            )
            self.save_state()
        return changes

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
            "reserved_values": dict(s.reserved_values),
            "ignored": dict(s.ignored),
            "counters": s.counter_causes(),
            "last_error": self.last_error or s.last_error,
            "states": {k: dict(v) for k, v in s.states.items()},
            "unpaired": [u.device for u in s.unpaired()],
        }
