"""The gateway agent: drivers -> raw store -> windows -> consent gate -> outbox -> publisher.

Everything runs in one asyncio loop except the publisher, which owns the MQTT client in its own thread. A
driver that fails is restarted with backoff by the supervisor here; the other drivers keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers import registry
from drivers.clock import ScaledClock, SystemClock
from edge_agent import processors as processor_kinds
from edge_agent.backup import backup, open_checked
from edge_agent.clockguard import ClockGuard
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.db import meta_get, storage_full
from edge_agent.disaster import DeclarationError, Declarations, SafetyStatus, load_city_key
from edge_agent.pipeline import Pipeline
from edge_agent.publisher import Publisher
from edge_agent.trade_meter import SlotMeters
from kyojo.contract.vocab import Clock, Driver, Event, KyojoError, Reading
from kyojo.runtime.backoff import Backoff
from kyojo.runtime.files import atomic_write_text

if TYPE_CHECKING:
    from drivers.ocpp.surplus import SurplusController

log = logging.getLogger(__name__)


def _version() -> str:
    """The installed kyojo version (the release gate compares it with the release it activated)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kyojo")
    except PackageNotFoundError:
        return "unknown"


def make_clock(config: AgentConfig) -> Clock:
    if config.clock.speed == 1.0 and config.clock.start is None:
        return SystemClock()
    return ScaledClock(config.clock.start if config.clock.start is not None else time.time(), config.clock.speed)


#: the household's pairing registries: ``kyojo pair`` and the home page write them (atomically), and a running
#: agent applies their changes within one commit interval (:meth:`Agent.apply_pairing`), without a restart
PAIRING_FILES = ("ble-devices.json", "plug-appliances.json")


def pairing_signature(data_dir: Path) -> tuple[object, ...]:
    """What changes when a registry file is replaced (atomic writes give it a new inode) or edited in place."""
    out: list[object] = []
    for name in PAIRING_FILES:
        try:
            st = (data_dir / name).stat()
        except FileNotFoundError:
            out.append(None)
        except OSError as err:
            out.append(type(err).__name__)
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def paired_ble(config: AgentConfig) -> list[Any]:
    """Device configs of the BLE devices the household paired (``kyojo pair add`` or the home page); [] without
    any (bleak's driver package is imported only on gateways that have some)."""
    if not (config.gateway.data_dir / "ble-devices.json").exists():
        return []
    from drivers.ble.paired import device_configs

    return list(device_configs(config.gateway.data_dir))


def build_drivers(config: AgentConfig, clock: Clock) -> tuple[list[Driver], float]:
    """Instantiate the configured and the paired devices. Returns the drivers and the longest polling tick
    (simulated s)."""
    ctx = registry.BuildContext(config.gateway.id, clock, config.clock.speed, config.gateway.data_dir)
    drivers: list[Driver] = []
    for entry in [*config.devices, *paired_ble(config)]:
        drivers.extend(registry.build(entry, ctx))
    tick = max([1.0, *(float(getattr(d, "tick_s", 1.0)) for d in drivers)])
    return drivers, tick


def _split_jumped(readings: list[Reading], jump: float, expected: float) -> tuple[list[Reading], list[Reading]]:
    """(stamped under ``jump``, the others): a reading stamped under a jump is about ``jump`` away from where the
    monotonic clock says the wall clock is (``expected``), more than half of it in the jump's direction."""
    sign, half = (1 if jump > 0 else -1), abs(jump) / 2
    under = [r for r in readings if (r.ts - expected) * sign > half]
    return under, [r for r in readings if (r.ts - expected) * sign <= half]


def certificate_identity(cert_path: Path) -> str:
    """The CN of the gateway's certificate: the identity the broker uses as username and client id.

    The agent's own reader (``cryptography``, imported only with mTLS) so that it needs nothing from provisioning,
    which issues the certificate (``provisioning.pki.identity_of`` is the CA side's).
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise ConfigError(f"certificate {cert_path}: the subject must have exactly one CN")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


class Agent:
    """Runs one gateway until ``stop`` is set. ``drivers`` overrides the configured devices (tests)."""

    def __init__(
        self, config: AgentConfig, *, clock: Clock | None = None, drivers: Sequence[Driver] | None = None
    ) -> None:
        self.config = config
        self.clock = clock or make_clock(config)
        #: the pairing registries as last applied (None: drivers were given, pairing is not watched)
        self._pairing_sig: tuple[object, ...] | None = None
        #: the paired BLE devices' configs as last applied, by device id
        self._paired: dict[str, Any] = {}
        if drivers is None:
            self._pairing_sig = pairing_signature(config.gateway.data_dir)
            self.drivers, tick = build_drivers(config, self.clock)
            self._paired = {c.id: c for c in paired_ble(config)}
        else:
            self.drivers, tick = list(drivers), 1.0
        self._tasks: list[tuple[Driver, asyncio.Task[None]]] = []
        self.pairing: dict[str, Any] = {"applied": 0, "errors": 0, "last_error": None}
        #: the database's room: full since when, readings refused because of it (never silently)
        self.storage: dict[str, Any] = {"full": False, "since": None, "readings_refused": 0, "times_full": 0}
        self.tick = tick
        #: opened after an integrity check; a damaged file is set aside and the backup restored (edge_agent.backup)
        self.conn, self.recovered = open_checked(config.db_path)
        self.pipeline = Pipeline(self.conn, config)
        # A reading is committed at most one polling tick plus one commit interval after it happened; on a busy
        # machine a fast simulated clock moves on meanwhile. Wait two of each (in simulated seconds) before a
        # window closes, so no reading arrives after its window was released.
        speed = float(getattr(self.clock, "speed", 1.0))
        self.pipeline.min_grace_s = 2 * tick + 2 * speed * config.store.commit_interval.total_seconds()
        self.check_identity()
        #: the time windows, consent expiry and pruning act on (a wall clock that jumps is held, see clockguard);
        #: off for an injected clock unless it says ``guarded = True`` (tests that move time by hand)
        self.guard: ClockGuard | None = None
        if clock is None or getattr(clock, "guarded", False):
            self.guard = ClockGuard(
                self.clock.now(),
                speed=speed,
                released_until=self.pipeline.released_until(),
                tolerance_s=config.clock.jump_tolerance.total_seconds(),
                confirm_s=config.clock.jump_confirm.total_seconds(),
            )
        #: readings stamped while the guard holds a jump: (the jump, the readings), stored when it is decided
        self._held: list[tuple[float, list[Reading]]] = []
        self._undone: tuple[float, float] | None = None  # the jump just undone, and until when (monotonic)
        self.held_dropped = 0
        self.publisher = Publisher(config)
        city_ca = config.safety.city_ca or (config.mqtt.tls.ca if config.mqtt.tls is not None else None)
        try:
            city_key = load_city_key(city_ca) if city_ca is not None else None
        except (OSError, ValueError, DeclarationError) as err:
            log.warning("city CA %s unreadable (%s): disaster declarations will be refused", city_ca, err)
            city_key = None
        self.declarations = Declarations(config.gateway.data_dir, city_key)
        self.safety = SafetyStatus(self.declarations, config.gateway.area, config.safety.interval.total_seconds())
        self.publisher.declarations = self.declarations
        self.publisher.now = self.trusted_now
        self._ctx = registry.BuildContext(config.gateway.id, self.clock, config.clock.speed, config.gateway.data_dir)
        self.processors = [processor_kinds.build(p, self._ctx) for p in config.processors]
        for proc in self.processors:
            if proc.lag_s and proc.category is not None:
                cat = proc.category
                self.pipeline.category_grace_s[cat] = max(self.pipeline.category_grace_s.get(cat, 0.0), proc.lag_s)
        self.driver_errors: dict[str, int] = {}
        #: drivers the supervisor stopped after an unexpected exception: device id -> the exception (status)
        self.drivers_stopped: dict[str, str] = {}
        self._buffer: list[Reading] = []
        self.surplus = self._surplus_loop()
        meter = self.config.trading.meter
        self.trade_meters = None if meter is None else SlotMeters(meter)
        self._publisher_started = False
        self._started = time.time()
        self._last_flush = time.monotonic()

    def _surplus_loop(self) -> SurplusController | None:
        """``[ev.surplus]``: the solar-surplus loop on the configured OCPP central system (None without it)."""
        loop = self.config.ev.surplus
        if loop is None:
            return None
        from drivers.ocpp.surplus import SurplusController

        ocpp = next((d for d in self.drivers if d.device_id == loop.ocpp and hasattr(d, "central")), None)
        if ocpp is None:
            raise ConfigError(f"[ev.surplus] ocpp = {loop.ocpp!r}: no running OCPP central system has that id")
        return SurplusController(loop, lambda: getattr(ocpp, "central", None), self.clock)

    def _on_reading(self, r: Reading) -> None:
        self._buffer.append(r)
        if self.surplus is not None:
            self.surplus.observe(r)
        if self.trade_meters is not None:
            self.trade_meters.observe(r)

    async def _run_driver(self, driver: Driver) -> None:
        """Supervise one driver. It never raises (except when cancelled), so one driver cannot stop the others."""
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                async for r in driver.readings():
                    self._on_reading(r)
                    backoff.reset()
                return  # a driver that ends on its own (a replay) is done
            except asyncio.CancelledError:
                raise
            except Exception as err:  # every failure: _driver_failed is the one place that decides
                delay = self._driver_failed(driver, err, backoff)
                if delay is None:
                    return
                await self.clock.sleep(delay)

    def _driver_failed(self, driver: Driver, err: Exception, backoff: Backoff) -> float | None:
        """Decide what a driver's failure means: the delay before restarting it, or None to stop it for good.

        Expected I/O and parse failures (:class:`KyojoError`, :class:`OSError`, :class:`ValueError`) are retried
        with backoff (simulated seconds, on the injected clock). Anything else is a bug: it is logged once with
        its traceback, and that driver alone stops and shows in ``status()["drivers_stopped"]``; the other
        drivers and the publisher keep running. Both count in ``driver_errors``.
        """
        device = driver.device_id
        self.driver_errors[device] = self.driver_errors.get(device, 0) + 1
        if isinstance(err, (KyojoError, OSError, ValueError)):
            delay = backoff.next()
            log.warning("driver %s failed (%s); restarting in %.1fs", device, err, delay)
            return delay
        self.drivers_stopped[device] = f"{type(err).__name__}: {err}"
        log.error("driver %s stopped by an unexpected error; the other drivers keep running", device, exc_info=err)
        return None

    def _write(self, op: Callable[[], object], *, readings: int = 0) -> bool:
        """Run one of the pipeline's write transactions; False when the storage is full (the transaction rolled
        back: ``readings`` readings were refused). Any other failure is raised as before."""
        try:
            op()
        except (sqlite3.OperationalError, OSError) as err:
            if not storage_full(err):
                raise
            self.pipeline.resync()
            st = self.storage
            st["readings_refused"] += readings
            if not st["full"]:
                st["full"], st["since"] = True, time.time()
                st["times_full"] += 1
                log.error(
                    "the gateway's storage is full (%s): new readings are refused until there is room again; what is "
                    "queued keeps being published",
                    err,
                )
            return False
        if readings and self.storage["full"]:
            log.warning(
                "storage has room again: readings are stored again (%d were refused meanwhile)",
                self.storage["readings_refused"],
            )
            self.storage["full"], self.storage["since"] = False, None
        return True

    def _start(self, tg: asyncio.TaskGroup, driver: Driver) -> None:
        self._tasks.append((driver, tg.create_task(self._run_driver(driver), name=f"driver-{driver.device_id}")))

    def apply_pairing(self, tg: asyncio.TaskGroup) -> bool:
        """Apply the household's pairing changes to the running agent; True when the registries had changed.

        A newly paired BLE device's driver starts, a removed (or reassigned) one's stops (its stored readings
        stay), and drivers that keep a pairing table of their own (the plugs', ``refresh_pairing()``) re-read it:
        a plug paired, renamed or forgotten counts from its next message. A registry that cannot be read leaves
        the devices as they were, logged and counted in ``status()["pairing"]``.
        """
        if self._pairing_sig is None:
            return False
        sig = pairing_signature(self.config.gateway.data_dir)
        if sig == self._pairing_sig:
            return False
        self._pairing_sig = sig
        try:
            wanted = {c.id: c for c in paired_ble(self.config)}
            stale = {dev for dev, c in self._paired.items() if wanted.get(dev) != c}
            for driver, task in [(d, t) for d, t in self._tasks if d.device_id in stale]:
                task.cancel()
                self._tasks.remove((driver, task))
                self.drivers.remove(driver)
            started = [c for dev, c in wanted.items() if self._paired.get(dev) != c]
            for entry in started:
                for driver in registry.build(entry, self._ctx):
                    self.drivers.append(driver)
                    self._start(tg, driver)
            self._paired = wanted
            for driver in self.drivers:
                refresh = getattr(driver, "refresh_pairing", None)
                if callable(refresh):
                    refresh()
        except (KyojoError, OSError, ValueError) as err:
            self.pairing["errors"] += 1
            self.pairing["last_error"] = f"{type(err).__name__}: {err}"[:300]
            log.warning("pairing change not applied (%s); the devices stay as they were", err)
            return True
        self.pairing["applied"] += 1
        self.pairing["last_error"] = None
        log.info(
            "pairing applied: %d BLE device(s) started, %d stopped; %d driver(s) now",
            len(started),
            len(stale),
            len(self.drivers),
        )
        return True

    def flush(self) -> None:
        """Commit buffered readings, then close due windows (in that order: aggregates see committed rows).

        A full disk does not stop the agent: new readings are refused (counted in ``status()["storage"]``), the
        windows and events wait, what is queued keeps being published, and all of it resumes when there is room
        again (:meth:`_write`). A wall clock that jumps is held by the guard: readings stamped under the jump wait
        and windows, expiry and pruning go on the trusted time (:mod:`edge_agent.clockguard`)."""
        self._last_flush = time.monotonic()
        buf, self._buffer = self._buffer, []
        now = self.clock.now()
        if self.guard is not None:
            decided = self.guard.observe(now)
            now = self.guard.trusted
            jump = self.guard.held_offset()
            if jump is not None and buf:
                under, buf = _split_jumped(buf, jump, self.guard.expected())
                self._hold(jump, under)
            if decided == "undone" and self._held:
                # readings stamped under the jump that reach the agent a little later are moved back too
                self._undone = (self._held[-1][0], time.monotonic() + self.UNDO_LATE_S)
            if self._undone is not None and jump is None:
                offset, until = self._undone
                if time.monotonic() > until:
                    self._undone = None
                else:
                    late, buf = _split_jumped(buf, offset, self.guard.expected())
                    buf += [dataclasses.replace(r, ts=r.ts - offset) for r in late]
            if decided in ("undone", "confirmed") and self._held:
                held, self._held = self._held, []
                for offset, readings in held:
                    shift = -offset if decided == "undone" else 0.0
                    buf += [dataclasses.replace(r, ts=r.ts + shift) for r in readings]
            buf.sort(key=lambda r: r.ts)
        self._store(buf)
        self._safety_status(now)
        if self.trade_meters is not None:  # metered values of the household's traded slots (edge_agent.trade_meter)
            meters, gw, keys, t = self.trade_meters, self.config.gateway.id, self.pipeline.keys, self.config.trading
            self._write(lambda: meters.due(self.conn, gw, keys, now))
            self._write(lambda: meters.record(self.conn, now))
            if t.offer_price is not None:  # the forecast surplus of the slot starting offer_ahead from now
                price, ahead = t.offer_price, t.offer_ahead.total_seconds()
                self._write(lambda: meters.offers(self.conn, gw, keys, now, price=price, share=t.offer_share,
                                                  ahead=ahead))  # fmt: skip
        self._write(lambda: self.pipeline.close_windows(now))
        self._write(lambda: self.pipeline.release_events(now))
        self.publisher.wake.set()

    #: after a jump is undone, readings stamped under it may still be on their way (a driver's buffer): real s
    UNDO_LATE_S = 60.0
    #: readings kept in memory while a clock jump is undecided (a day of a busy home); beyond, counted and dropped
    MAX_HELD = 500_000

    #: how often the consents, the log and the counters are copied to the backup database (real s)
    BACKUP_EVERY_S = 60.0

    def _backup(self) -> None:
        """Refresh the backup (edge_agent.backup); a full disk or a failing copy is logged, never fatal."""
        try:
            backup(self.conn, self.config.db_path)
        except (sqlite3.Error, OSError) as err:
            log.warning("backup of consents and the log failed (%s); the next one is in a minute", err)

    def trusted_now(self) -> float:
        """The time windows, consent expiry and pruning act on: the guard's, or the clock's without a guard."""
        return self.clock.now() if self.guard is None else self.guard.trusted

    def _hold(self, jump: float, readings: list[Reading]) -> None:
        room = self.MAX_HELD - sum(len(r) for _, r in self._held)
        if len(readings) > room:
            self.held_dropped += len(readings) - max(room, 0)
            readings = readings[: max(room, 0)]
        if readings:
            self._held.append((jump, readings))

    def _store(self, buf: list[Reading]) -> None:
        if buf and self._write(lambda: self.pipeline.store(buf), readings=len(buf)):
            for proc in self.processors:
                out = proc.feed(buf)
                events = [o for o in out if isinstance(o, Event)]
                derived = [o for o in out if isinstance(o, Reading)]
                self._write(functools.partial(self.pipeline.store_events, events))
                if derived:
                    self._write(functools.partial(self.pipeline.store, derived), readings=len(derived))

    def _safety_status(self, now: float) -> None:
        """While a disaster is declared for this area: the home's coarse status, for each person who granted
        disaster-safety (edge_agent.disaster)."""
        if self.declarations.active(self.config.gateway.area, now) is None:
            return
        from edge_agent.processors.watchover import WatchoverProcessor  # only while a disaster is declared

        subjects = sorted({c.subject for c in self.pipeline.active_consents() if c.purpose == "disaster-safety"})
        watch = next((p for p in self.processors if isinstance(p, WatchoverProcessor)), None)
        events = self.safety.due(
            now,
            subjects,
            last_activity=None if watch is None else watch.watch.last_activity,
            power_seen=None if watch is None else watch.last_power,
            device="gateway" if watch is None else watch.config.meter,
            watched=watch is not None,
        )
        if events:
            self._write(functools.partial(self.pipeline.store_events, events))

    def status(self) -> dict[str, Any]:
        st = self.pipeline.stats
        pub = self.publisher.stats
        depth = self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return {
            "gateway": self.config.gateway.id,
            "version": _version(),
            "at": time.time(),
            "clock": self.clock.now(),
            "uptime_s": round(time.time() - self._started, 1),
            "readings": st.readings,
            "late": st.late,
            "aggregates": st.aggregates,
            "denied": st.denied,
            "events": st.events,
            "events_released": st.events_released,
            "events_withheld": st.events_withheld,
            "processors": {p.name: dict(p.health()) for p in self.processors},
            "aggregates_queued": st.aggregates_queued,
            "messages_queued": st.messages_queued,
            "messages_sent": pub.messages_sent,
            "aggregates_sent": pub.aggregates_sent,
            "events_sent": pub.events_sent,
            "aggregates_sent_total": meta_get(self.conn, "aggregates_sent"),
            "outbox_depth": depth,
            "outbox_dropped": meta_get(self.conn, "outbox_dropped"),
            "refused": meta_get(self.conn, "refused"),
            "connected": pub.connected,
            "broker_error": pub.last_error,
            "publisher_errors": pub.errors,
            "publisher_alive": self.publisher.is_alive(),
            "inflight": pub.inflight,
            "drivers": len(self.drivers),
            "driver_errors": dict(self.driver_errors),
            "drivers_stopped": dict(self.drivers_stopped),
            "pairing": dict(self.pairing),
            "safety": {
                "area": self.config.gateway.area,
                "declaration": getattr(
                    self.declarations.active(self.config.gateway.area, self.trusted_now()), "id", None
                ),
                "taken": self.declarations.taken,
                "refused": dict(self.declarations.refused),
                "statuses": self.safety.made,
            },
            "storage": dict(self.storage),
            "database_recovered": self.recovered,
            "clock_guard": None
            if self.guard is None
            else {
                **self.guard.status(),
                "readings_held": sum(len(r) for _, r in self._held),
                "held_dropped": self.held_dropped,
            },
            "counters": self._counter_causes(),
            "counter_steps_held": dict(self.pipeline.held),
            "receipts_refused": dict(pub.receipts_refused),
            "anchor_problem": pub.anchor_problem,
            "links": self._links(),
            "ev_surplus": None if self.surplus is None else self.surplus.status(),
            "trading": None if self.trade_meters is None else dict(self.trade_meters.status()),
        }

    def _links(self) -> dict[str, dict[str, Any]]:
        """Per radio device, what the household's devices page shows: connected, battery, last seen, last error
        (drivers whose ``health()`` reports a link: BLE today). No measurement values."""
        keep = ("connected", "battery_level", "last_seen", "rssi", "last_error")
        out: dict[str, dict[str, Any]] = {}
        for d in self.drivers:
            health = d.health()
            if "connected" in health:
                out[d.device_id] = {k: health.get(k) for k in keep}
        return out

    def _counter_causes(self) -> dict[str, Any]:
        """Energy counters' roll-overs, resets and held readings by cause, per driver that keeps counters
        (``health()["counters"]``, see drivers/counter.py): a held reading is dropped, so this is where it shows."""
        out: dict[str, Any] = {}
        for d in self.drivers:
            counters = d.health().get("counters")
            if isinstance(counters, Mapping) and counters:
                out[d.device_id] = dict(counters)
        return out

    def write_status(self, path: Path) -> None:
        try:
            atomic_write_text(path, json.dumps(self.status()), mode=0o644)
        except OSError as err:  # a full disk must not stop the agent; the status file is written again next round
            if not storage_full(err):
                raise
            log.debug("status not written: %s", err)

    def check_identity(self) -> None:
        """With mTLS the broker takes the certificate's CN as the identity: it must be this gateway's id."""
        tls = self.config.mqtt.tls
        if tls is None or tls.cert is None:
            return
        cn = certificate_identity(tls.cert)
        if cn != self.config.gateway.id:
            raise ConfigError(
                f"certificate {tls.cert} is for {cn!r}, not this gateway {self.config.gateway.id!r}: "
                "every publish would be refused (0x87)"
            )

    def healthy(self) -> bool:
        """For the systemd watchdog: the loop flushed recently, and the publisher thread is alive and going round
        (a publisher that died or hangs would stop uploads silently: then the watchdog restarts the agent)."""
        now = time.monotonic()
        limit = max(60.0, 10 * self.config.store.commit_interval.total_seconds())
        publisher_ok = (not self.publisher.is_alive() and not self._publisher_started) or (
            self.publisher.is_alive() and now - self.publisher.beat < limit
        )
        return now - self._last_flush < limit and publisher_ok

    async def run(self, stop: asyncio.Event) -> None:
        from kyojo.runtime import sdnotify

        self.publisher.start()
        self._publisher_started = True
        watchdog = asyncio.get_running_loop().create_task(sdnotify.watchdog_task(self.healthy))
        sdnotify.ready(f"gateway {self.config.gateway.id}: {len(self.drivers)} drivers")
        interval = self.config.store.commit_interval.total_seconds()
        last_prune = 0.0
        self._backup()
        last_backup = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                for d in list(self.drivers):
                    self._start(tg, d)
                surplus = None if self.surplus is None else tg.create_task(self.surplus.run(), name="ev-surplus")
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await stop.wait()
                    self.apply_pairing(tg)
                    self.flush()
                    if time.monotonic() - last_backup > self.BACKUP_EVERY_S:
                        self._backup()
                        last_backup = time.monotonic()
                    if time.monotonic() - last_prune > 3600:
                        self._write(functools.partial(self.pipeline.prune, self.trusted_now()))
                        last_prune = time.monotonic()
                    self.write_status(self.config.status_path)
                for _, t in self._tasks:
                    t.cancel()
                if surplus is not None:
                    surplus.cancel()
            sdnotify.stopping()
            self.flush()
            self._backup()
            self.write_status(self.config.status_path)
        finally:
            watchdog.cancel()
            self.publisher.stop()
            self.write_status(self.config.status_path)
            self.conn.close()
