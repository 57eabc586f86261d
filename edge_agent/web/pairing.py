"""Scan and pair jobs for the household's devices page: the code paths of ``kyojo pair``, run in the background.

The page starts a job and polls it; a job is an asyncio task of the web process with a state the page renders:

- **scan**: BLE health devices advertising a supported service (:func:`drivers.ble.pair.scan`, with its live
  ``on_found`` callback: address, name, RSSI, profile) and, at the same time, smart plugs heard on the home's LAN
  broker (the agent's own plugs driver, built from the gateway config by :func:`drivers.plugs.device.build`, listening
  read-only, plus what the running agent recorded in ``plugs-<id>.json`` -- what ``kyojo pair plugs`` lists);
- **pair**: one BLE device (:func:`drivers.ble.pair.add_device`: find, connect, check the profile, bond when it must,
  then :func:`drivers.ble.pair.record` into ``ble-devices.json``). A plug is "paired" by naming its appliance
  (:func:`drivers.plugs.pairing.accept` into ``plug-appliances.json``), which needs no radio and no job.

How this coordinates with the agent (the same way as ``kyojo pair``): the web process never talks to a device the
agent reads; it writes the two registry files atomically (temporary file + rename), and the running agent applies the
change within one commit interval (``edge_agent.agent.Agent.apply_pairing``: a paired strap's driver starts, a plug's
readings count from its next message), so a device paired here is read within seconds, without a restart or a
terminal; until the agent reports the device in its status (``links``) the page says "waiting for the gateway".
One BLE job runs at a time (BlueZ allows one discovery per adapter, and two pairings would race on the registry file).

Pairing problems become a :class:`Problem` with a :class:`ProblemKind` the page words in plain language with what
to do next; ``detail`` keeps the stack's own text (shown under "details", never a measurement value).

A device's display name (血圧計) is the household's, not the agent's: it lives in the web database
(table ``device_labels``). People are subject ids here (``p1``); their names (お父さん) are the household page's
(:mod:`edge_agent.web.household`), so "お父さんの血圧計" is composed by the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from drivers.ble import paired
from drivers.ble import pairing as ble_pair  # the bookkeeping; the radio (bleak) only when it is used
from drivers.ble.device import ADDRESS_PATTERN
from drivers.ble.profiles import PROFILES
from drivers.plugs import pairing as plug_pairing
from kyojo.contract.vocab import ID_PATTERN, KyojoError

log = logging.getLogger(__name__)

#: the agent's status counts as current for this long (it writes it every commit interval)
STATUS_FRESH_S = 120.0
#: longest display name of a device or a person
MAX_LABEL = 40


# ------------------------------------------------------------------------------------------------------------
# Problems, in kinds the page can word
# ------------------------------------------------------------------------------------------------------------


class ProblemKind(StrEnum):
    """What went wrong, as the household can act on it (the page's wording is keyed by these)."""

    out_of_range = "out_of_range"  # not seen advertising within the time: off, asleep, too far
    bonding_refused = "bonding_refused"  # the device refused to pair: not in pairing mode
    pin_wrong = "pin_wrong"  # pairing ran but the keys did not match
    already_paired = "already_paired"
    timeout = "timeout"  # connected or started, then nothing within the time
    wrong_profile = "wrong_profile"  # not a health device we read, or offers several
    no_adapter = "no_adapter"  # the gateway's Bluetooth is off or missing
    link_failed = "link_failed"  # the connection failed or dropped
    no_plugs = "no_plugs"  # the gateway has no smart-plug broker configured
    bad_input = "bad_input"  # a name or address the household typed is not usable
    busy = "busy"  # another scan or pairing is running
    not_found = "not_found"  # no such device on the gateway


class PairingProblem(KyojoError):
    """A pairing operation failed; ``kind`` says how (for the page), the message is the technical detail."""

    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Problem:
    """A job's failure as the page shows it."""

    kind: ProblemKind
    detail: str


def classify(err: BaseException) -> Problem:
    """The :class:`Problem` for an exception of the pairing code paths."""
    if isinstance(err, PairingProblem):
        return Problem(err.kind, err.detail)
    detail = str(err) or err.__class__.__name__
    if isinstance(err, ble_pair.NotFound):
        return Problem(ProblemKind.out_of_range, detail)
    if isinstance(err, ble_pair.PinRejected):
        return Problem(ProblemKind.pin_wrong, detail)
    if isinstance(err, ble_pair.PairingRefused):
        return Problem(ProblemKind.bonding_refused, detail)
    if isinstance(err, ble_pair.AlreadyPaired):
        return Problem(ProblemKind.already_paired, detail)
    if isinstance(err, ble_pair.WrongProfile):
        return Problem(ProblemKind.wrong_profile, detail)
    if isinstance(err, ble_pair.NoAdapter):
        return Problem(ProblemKind.no_adapter, detail)
    if isinstance(err, TimeoutError) or isinstance(err.__cause__, TimeoutError):
        return Problem(ProblemKind.timeout, detail)
    if isinstance(err, plug_pairing.PairingError):
        return Problem(ProblemKind.already_paired if "already" in detail else ProblemKind.bad_input, detail)
    return Problem(ProblemKind.link_failed, detail)


# ------------------------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------------------------

JobState = Literal["running", "done", "failed"]


@dataclass(slots=True)
class Candidate:
    """Something the scan found: a BLE health device or a smart plug."""

    kind: Literal["ble", "plug"]
    key: str  # BLE address, or the plug's native key (tasmota:..., shelly:..., z2m:...)
    name: str | None
    last_seen: float
    rssi: int | None = None  # dBm (BLE)
    profiles: tuple[str, ...] = ()  # BLE profiles it advertises
    family: str | None = None  # plug firmware family
    model: str | None = None
    paired_as: str | None = None  # device id (BLE) or appliance (plug) when already paired


@dataclass(slots=True)
class Job:
    """A background scan or pairing; the page polls it by ``id``."""

    id: str
    what: Literal["scan", "pair"]
    started: float
    duration_s: float
    state: JobState = "running"
    found: dict[str, Candidate] = field(default_factory=dict)
    problem: Problem | None = None
    #: the device id the pairing stored
    device_id: str | None = None
    #: the plugs listener could not run (no plugs configured, broker refused): the page says so
    plugs_note: ProblemKind | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def progress(self, now: float | None = None) -> float:
        """0..1 of the scan's planned time (1 when finished)."""
        if not self.running:
            return 1.0
        elapsed = (time.time() if now is None else now) - self.started
        return max(0.0, min(1.0, elapsed / self.duration_s)) if self.duration_s > 0 else 0.0

    def candidates(self) -> list[Candidate]:
        """New devices before those already added; health devices first (strongest signal first), then plugs."""
        ble = sorted((c for c in self.found.values() if c.kind == "ble"), key=lambda c: -(c.rssi or -999))
        plugs = sorted((c for c in self.found.values() if c.kind == "plug"), key=lambda c: c.key)
        every = [*ble, *plugs]
        return [c for c in every if c.paired_as is None] + [c for c in every if c.paired_as is not None]


# ------------------------------------------------------------------------------------------------------------
# Device names (web database)
# ------------------------------------------------------------------------------------------------------------

LABELS_SCHEMA = "CREATE TABLE IF NOT EXISTS device_labels(device TEXT PRIMARY KEY, label TEXT NOT NULL);"


def _check_person(person: str) -> str:
    person = person.strip()
    if not re.fullmatch(ID_PATTERN, person):
        raise PairingProblem(ProblemKind.bad_input, f"say whose device it is (not a person id: {person!r})")
    return person


def valid_label(value: object) -> bool:
    """A display name: 1..40 printable characters, not only spaces."""
    return isinstance(value, str) and 0 < len(value.strip()) <= MAX_LABEL and value.isprintable()


def _clean_label(value: str | None, what: str) -> str | None:
    if value is None or not value.strip():
        return None
    value = " ".join(value.split())
    if not valid_label(value):
        raise PairingProblem(ProblemKind.bad_input, f"{what}: at most {MAX_LABEL} characters, no control characters")
    return value


def labels(web_db: sqlite3.Connection) -> dict[str, str]:
    """Device id -> the household's name for it."""
    web_db.execute(LABELS_SCHEMA)
    return {str(d): str(label) for d, label in web_db.execute("SELECT device, label FROM device_labels")}


def set_label(web_db: sqlite3.Connection, device_id: str, label: str | None) -> None:
    """Name a device (``None`` forgets the name)."""
    web_db.execute(LABELS_SCHEMA)
    if label is None:
        web_db.execute("DELETE FROM device_labels WHERE device = ?", (device_id,))
    else:
        web_db.execute(
            "INSERT INTO device_labels(device, label) VALUES(?, ?) "
            "ON CONFLICT(device) DO UPDATE SET label = excluded.label",
            (device_id, label),
        )


# ------------------------------------------------------------------------------------------------------------
# What the page lists
# ------------------------------------------------------------------------------------------------------------

Connection = Literal["connected", "disconnected", "waiting", "agent_down", "listening"]


@dataclass(frozen=True, slots=True)
class LastReading:
    metric: str
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device of the home, as the devices page shows it."""

    kind: Literal["ble", "plug"]
    id: str  # the agent's device id
    key: str  # address or plug key
    subject: str  # person id (BLE), the household (plug), "" (configured: see the config)
    label: str | None  # the household's name for it
    model: str | None  # profile (BLE) or appliance (plug)
    connection: Connection
    battery: int | None
    last: LastReading | None
    removable: bool  # False for devices the installer put in the config
    last_error: str | None = None
    ever_read: bool = False  # the gateway stored something from it, some time
    diastolic: LastReading | None = None  # with a systolic ``last`` of the same measurement


# ------------------------------------------------------------------------------------------------------------
# The service
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the service reads from the agent's config (read again on each use: the config belongs to the agent)."""

    site: ble_pair.Site
    db_path: Path
    status_path: Path
    household: str
    plugs: tuple[Any, ...]  # the config's ``kind = "plugs"`` entries
    ble: tuple[tuple[str, str, str, str], ...]  # the config's BLE devices: (id, address, profile, subject)
    plug_appliances: dict[str, str]  # from the config (wins over plug-appliances.json, as in the agent)


def load_gateway(config_path: Path) -> Gateway:
    """Read the agent's config: the same site as ``kyojo pair`` (:func:`edge_agent.cli.pairing_site`)."""
    from edge_agent.config import load_config

    cfg = load_config(config_path)
    configured = {
        str(getattr(dev, "address", "")).upper(): str(dev.id)
        for dev in cfg.devices
        if getattr(dev, "kind", "") == "ble"
    }
    plugs = tuple(d for d in cfg.devices if getattr(d, "kind", "") == "plugs")
    appliances: dict[str, str] = {}
    for d in plugs:
        appliances |= dict(d.appliances)
    household = str(plugs[0].household) if plugs else cfg.gateway.id
    ble = tuple(
        (str(d.id), str(d.address).upper(), str(d.profile), str(d.subject))
        for d in cfg.devices
        if getattr(d, "kind", "") == "ble"
    )
    return Gateway(
        ble_pair.Site(data_dir=cfg.gateway.data_dir, configured=configured),
        cfg.db_path,
        cfg.status_path,
        household,
        plugs,
        ble,
        appliances,
    )


class PairingService:
    """Starts and keeps the scan/pair jobs of one web process, and lists the home's devices.

    ``scan_s``: how long a scan listens; ``find_within``: how long pairing looks for the device;
    ``pair_timeout``: the whole pairing (connect, discover, bond) must end within it. Jobs are kept for
    ``keep_s`` after they end (the page may poll once more), at most ``max_jobs``.
    """

    def __init__(
        self,
        config_path: Path,
        web_db: sqlite3.Connection,
        *,
        scan_s: float = 10.0,
        find_within: float = 20.0,
        pair_timeout: float = 60.0,
        keep_s: float = 600.0,
        max_jobs: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = config_path
        self.web_db = web_db
        self.scan_s = scan_s
        self.find_within = find_within
        self.pair_timeout = pair_timeout
        self.keep_s = keep_s
        self.max_jobs = max_jobs
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self._radio = asyncio.Lock()  # one BLE job at a time
        self._files = asyncio.Lock()  # registry read-modify-write

    def gateway(self) -> Gateway:
        try:
            return load_gateway(self.config_path)
        except KyojoError as err:
            raise PairingProblem(ProblemKind.bad_input, f"the gateway config cannot be read: {err}") from err

    # -- jobs --------------------------------------------------------------------------------------------
    def job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.running), None)

    def _new(self, what: Literal["scan", "pair"], duration: float) -> Job:
        running = self.running()
        if running is not None:
            raise PairingProblem(ProblemKind.busy, f"a {running.what} is running (job {running.id})")
        self._expire()
        job = Job(secrets.token_urlsafe(12), what, self.clock(), duration)
        self.jobs[job.id] = job
        return job

    def _expire(self) -> None:
        now = self.clock()
        for jid, j in list(self.jobs.items()):
            if not j.running and j.finished is not None and now - j.finished > self.keep_s:
                del self.jobs[jid]
        while len(self.jobs) >= self.max_jobs:
            oldest = min((j for j in self.jobs.values() if not j.running), key=lambda j: j.started, default=None)
            if oldest is None:
                break
            del self.jobs[oldest.id]

    def _finish(self, job: Job, problem: Problem | None = None) -> None:
        job.problem = problem
        job.state = "failed" if problem else "done"
        job.finished = self.clock()

    def start_scan(self, duration: float | None = None) -> Job:
        """Start a scan (BLE and plugs together); the running scan if one runs; ``busy`` while a pairing runs."""
        running = self.running()
        if running is not None and running.what == "scan":
            return running
        gw = self.gateway()
        job = self._new("scan", self.scan_s if duration is None else duration)
        job.task = asyncio.get_running_loop().create_task(self._scan(job, gw), name=f"web-scan-{job.id}")
        return job

    async def _scan(self, job: Job, gw: Gateway) -> None:
        known = {d.address.upper(): d.id for d in self._ble_registry(gw)} | dict(gw.site.configured)

        def on_ble(n: ble_pair.Nearby) -> None:
            job.found[n.address] = Candidate(
                "ble", n.address, n.name, self.clock(), rssi=n.rssi, profiles=n.profiles, paired_as=known.get(n.address)
            )

        problem: Problem | None = None
        try:
            async with self._radio:
                plugs = asyncio.get_running_loop().create_task(self._listen_plugs(job, gw))
                try:
                    radio = _radio()
                    async with radio.backend_factory() as backend:
                        await radio.scan(backend, job.duration_s, on_found=on_ble)
                except Exception as err:  # every failure of the radio becomes a worded problem
                    problem = classify(err)
                    log.info("scan: BLE part failed: %s", problem.kind)
                finally:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(max(1.0, job.duration_s - (self.clock() - job.started))):
                            await asyncio.shield(plugs)
                    if not plugs.done():
                        plugs.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await plugs
        finally:
            self._finish(job, problem)

    async def _listen_plugs(self, job: Job, gw: Gateway) -> None:
        """Plugs the agent recorded, then everything heard on the LAN broker(s) for the scan's duration."""
        paired_plugs = {**plug_pairing.load(gw.site.data_dir), **gw.plug_appliances}

        def note(rec: dict[str, Any] | Any) -> None:
            doc = rec if isinstance(rec, dict) else rec.to_dict()
            key = str(doc["device"])
            job.found[key] = Candidate(
                "plug",
                key,
                str(doc.get("name") or "") or None,
                float(doc.get("last_seen") or self.clock()),
                family=str(doc.get("family") or "") or None,
                model=str(doc.get("model") or "") or None,
                paired_as=paired_plugs.get(key),
            )

        for rec in plug_pairing.seen(gw.site.data_dir):
            note(rec)
        if not gw.plugs:
            job.plugs_note = ProblemKind.no_plugs
            return
        from drivers.clock import SystemClock
        from drivers.plugs import device as plug_device
        from drivers.registry import BuildContext

        drivers: list[Any] = []
        for conf in gw.plugs:
            ctx = BuildContext(gw.household, SystemClock(), 1.0, gw.site.data_dir)
            for drv in plug_device.build(conf, ctx):
                # listen only: never write the agent's discovery file (it owns plugs-<id>.json)
                drv.state_path = None  # type: ignore[attr-defined]
                drivers.append(drv)

        async def drain(drv: Any) -> None:
            async for _ in drv.readings():  # paired plugs' readings: not ours to keep
                pass

        tasks = [asyncio.get_running_loop().create_task(drain(d)) for d in drivers]
        try:
            deadline = job.started + job.duration_s
            while self.clock() < deadline:
                for drv in drivers:
                    for s in drv.session.records():
                        note(s)
                await asyncio.sleep(0.25)
            for drv in drivers:
                if not drv.connects:
                    job.plugs_note = ProblemKind.link_failed
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def start_pair(self, address: str, person: str, *, label: str | None = None, profile: str | None = None) -> Job:
        """Start pairing the BLE device at ``address`` for ``person`` (a subject id, e.g. ``p1``)."""
        address = address.strip().upper()
        if not re.fullmatch(ADDRESS_PATTERN, address):
            raise PairingProblem(ProblemKind.bad_input, f"{address!r} is not a Bluetooth address")
        if profile is not None and profile not in PROFILES:
            raise PairingProblem(ProblemKind.bad_input, f"unknown profile {profile!r}")
        person = _check_person(person)
        gw = self.gateway()
        label = _clean_label(label, "device name")
        try:
            ble_pair.check_free(gw.site, self._ble_registry(gw), address)
        except ble_pair.AlreadyPaired as err:
            raise PairingProblem(ProblemKind.already_paired, str(err)) from err
        job = self._new("pair", self.pair_timeout)
        job.task = asyncio.get_running_loop().create_task(
            self._pair(job, gw, address, person, label, profile), name=f"web-pair-{job.id}"
        )
        return job

    async def _pair(self, job: Job, gw: Gateway, address: str, person: str, label: str | None, profile: Any) -> None:
        problem: Problem | None = None
        try:
            radio = _radio()
            async with self._radio, asyncio.timeout(self.pair_timeout), radio.backend_factory() as backend:
                added = await radio.add_device(backend, address, profile, find_within=self.find_within)
            async with self._files:
                entry = ble_pair.record(gw.site, added, person)
                if label is not None:
                    set_label(self.web_db, entry.id, label)
            job.device_id = entry.id
            log.info("paired %s as %s (%s)", address, entry.id, entry.profile)
        except Exception as err:  # every failure becomes a worded problem
            problem = classify(err)
            log.info("pairing %s failed: %s (%s)", address, problem.kind, problem.detail)
        finally:
            self._finish(job, problem)

    # -- plugs -------------------------------------------------------------------------------------------
    async def pair_plug(self, key: str, appliance: str, *, label: str | None = None) -> str:
        """Name the appliance behind plug ``key`` (``kyojo pair plugs --accept``); the agent's device id."""
        gw = self.gateway()
        if not gw.plugs:
            raise PairingProblem(ProblemKind.no_plugs, 'the gateway config has no kind = "plugs" device')
        label = _clean_label(label, "device name")
        async with self._files:
            try:
                plug_pairing.accept(gw.site.data_dir, key, appliance, gw.plug_appliances)
            except plug_pairing.PairingError as err:
                raise PairingProblem(classify(err).kind, str(err)) from err
            device_id = f"{gw.household}-{appliance}"
            if label is not None:
                set_label(self.web_db, device_id, label)
        log.info("paired plug %s as %s", key, device_id)
        return device_id

    # -- names, owners, removal --------------------------------------------------------------------------
    def owners(self) -> set[str]:
        """The subjects that own a paired BLE device (people the household page may not know of yet)."""
        return {d.subject for d in self._ble_registry(self.gateway())}

    async def update(self, device_id: str, *, label: str | None, person: str | None = None) -> None:
        """Rename a device (``label`` None or blank forgets the name) and/or give a paired BLE device to another
        person (its subject in ``ble-devices.json``: the agent reads it when it restarts)."""
        gw = self.gateway()
        label = _clean_label(label, "device name")
        async with self._files:
            view = next((d for d in self.devices(gw) if d.id == device_id), None)
            if view is None:
                raise PairingProblem(ProblemKind.not_found, f"no device {device_id!r} on this gateway")
            if person and view.kind == "ble" and person != view.subject:
                if not view.removable:
                    raise PairingProblem(ProblemKind.bad_input, f"{device_id} is set in the gateway config")
                person = _check_person(person)
                devices = self._ble_registry(gw)
                changed = [d.model_copy(update={"subject": person}) if d.id == device_id else d for d in devices]
                paired.save(gw.site.data_dir, changed)
            set_label(self.web_db, device_id, label)

    async def remove(self, device_id: str) -> str | None:
        """Forget a device (``kyojo pair remove`` / ``pair plugs --forget``); stored measurements are kept.

        Returns a warning when a BLE bond could not be deleted (best effort, as in the CLI)."""
        gw = self.gateway()
        async with self._files:
            view = next((d for d in self.devices(gw) if d.id == device_id), None)
            if view is None:
                raise PairingProblem(ProblemKind.not_found, f"no device {device_id!r} on this gateway")
            if not view.removable:
                raise PairingProblem(ProblemKind.bad_input, f"{device_id} is set in the gateway config")
            problem = None
            if view.kind == "ble":
                devices = self._ble_registry(gw)
                entry = next(d for d in devices if d.id == device_id)
                paired.save(gw.site.data_dir, [d for d in devices if d.id != device_id])
                if entry.bonded and self._radio.locked():
                    problem = "Bluetooth is busy with a scan or a pairing: the pairing keys were kept"
                elif entry.bonded:
                    radio = _radio()
                    async with self._radio, radio.backend_factory() as backend:
                        problem = await radio.forget_bond(backend, entry.address)
            else:
                plug_pairing.forget(gw.site.data_dir, view.key)
            set_label(self.web_db, device_id, None)
        log.info("removed %s", device_id)
        return problem

    # -- listing -----------------------------------------------------------------------------------------
    def _ble_registry(self, gw: Gateway) -> list[paired.PairedDevice]:
        try:
            return paired.load(gw.site.data_dir)
        except paired.RegistryError as err:
            raise PairingProblem(ProblemKind.bad_input, str(err)) from err

    def _status(self, gw: Gateway) -> dict[str, Any] | None:
        try:
            doc = json.loads(gw.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or self.clock() - float(doc.get("at") or 0) > STATUS_FRESH_S:
            return None
        return doc

    def devices(self, gw: Gateway | None = None) -> list[DeviceView]:
        """Every device of the home: paired BLE devices and plugs, and those the installer configured."""
        gw = gw or self.gateway()
        names = labels(self.web_db)
        status = self._status(gw)
        links: dict[str, dict[str, Any]] = (status or {}).get("links") or {}
        stopped = (status or {}).get("drivers_stopped") or {}
        rows: list[
            tuple[Literal["ble", "plug"], str, str, str | None, str, bool]
        ] = []  # kind, id, key, model, subject, removable
        for d in self._ble_registry(gw):
            rows.append(("ble", d.id, d.address, d.profile, d.subject, True))
        for dev_id, address, profile, subject in gw.ble:
            rows.append(("ble", dev_id, address, profile, subject, False))
        plug_map = {**plug_pairing.load(gw.site.data_dir)}
        for key, appliance in {**plug_map, **gw.plug_appliances}.items():
            rows.append(
                ("plug", f"{gw.household}-{appliance}", key, appliance, gw.household, key not in gw.plug_appliances)
            )
        last, ever = _last_readings(gw.db_path, [r[1] for r in rows], since=self.clock() - 30 * 86400)
        out = []
        for kind, dev_id, key, model, subject, removable in rows:
            link = links.get(dev_id)
            battery: int | None = None
            error: str | None = None
            connection: Connection
            if status is None:
                connection = "agent_down"
            elif kind == "plug":
                connection = "listening" if dev_id in last or key in gw.plug_appliances else "waiting"
            elif link is None:
                connection = "waiting" if dev_id not in stopped else "disconnected"
            else:
                connection = "connected" if link.get("connected") else "disconnected"
                battery = link.get("battery_level") if isinstance(link.get("battery_level"), int) else None
                error = link.get("last_error") if isinstance(link.get("last_error"), str) else None
            readings = last.get(dev_id, {})
            if battery is None and "battery_level" in readings:
                battery = round(readings["battery_level"].value)
            newest = _headline(readings)
            lower = readings.get("diastolic") if newest is not None and newest.metric == "systolic" else None
            out.append(
                DeviceView(
                    kind,
                    dev_id,
                    key,
                    subject,
                    names.get(dev_id),
                    model,
                    connection,
                    battery,
                    newest,
                    removable,
                    error,
                    dev_id in ever,
                    lower if lower is not None and newest is not None and lower.ts == newest.ts else None,
                )
            )
        return out


#: what a device's "last reading" shows, in order of preference: the measurement it is for, not a side value
#: (a strap's RR interval, a plug's voltage)
HEADLINE = (
    "heart_rate",
    "systolic",
    "glucose",
    "spo2",
    "body_temperature",
    "weight",
    "power",
    "pulse_rate",
    "body_fat",
)


def _headline(readings: dict[str, LastReading]) -> LastReading | None:
    """The newest of the device's headline metrics (any metric but battery and counters when it has none)."""
    main = [readings[m] for m in HEADLINE if m in readings]
    rest = [r for m, r in readings.items() if m not in {"battery_level", "energy"}]
    return max(main or rest, key=lambda r: r.ts, default=None)


#: how long the page may spend finding last readings (the raw store has no index by series: a device that sent
#: nothing lately would make SQLite walk the whole window)
LAST_READING_BUDGET_S = 0.1


def _last_readings(
    db_path: Path, device_ids: list[str], *, since: float, budget_s: float = LAST_READING_BUDGET_S
) -> tuple[dict[str, dict[str, LastReading]], set[str]]:
    """Device id -> metric -> its newest stored reading since ``since``, and the devices with any series at all.

    One backward walk of the ``ts`` index (newest first) that stops when every series is found or after
    ``budget_s`` (a series not found by then shows as "nothing recently"). Read-only; nothing if no database yet.
    """
    if not device_ids or not db_path.exists():
        return {}, set()
    out: dict[str, dict[str, LastReading]] = {}
    with _readonly(db_path) as conn:
        marks = ",".join("?" * len(device_ids))
        rows = conn.execute(
            f"SELECT id, device, metric FROM series WHERE device IN ({marks})",  # noqa: S608 (placeholders only)
            device_ids,
        ).fetchall()
        series = {int(sid): (str(dev), str(metric)) for sid, dev, metric in rows}
        if not series:
            return {}, set()
        deadline = time.monotonic() + budget_s
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        marks = ",".join("?" * len(series))
        cur = conn.execute(
            f"SELECT series, ts, value FROM raw WHERE ts >= ? AND series IN ({marks}) ORDER BY ts DESC",  # noqa: S608
            [int(since * 1000), *series],
        )
        left = set(series)
        with contextlib.suppress(sqlite3.OperationalError):  # "interrupted": the budget is spent
            for sid, ts, value in cur:
                if sid in left:
                    left.discard(sid)
                    device, metric = series[sid]
                    out.setdefault(device, {})[metric] = LastReading(metric, float(value), ts / 1000)
                    if not left:
                        break
    return out, {dev for dev, _ in series.values()}


@contextlib.contextmanager
def _readonly(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        yield conn
    finally:
        conn.close()


def _radio() -> ModuleType:
    """:mod:`drivers.ble.pair` (bleak and the BLE stack), imported when a scan, a pairing or a removal runs: the
    pages themselves never load the Bluetooth stack (the web process stays small while it waits)."""
    from drivers.ble import pair

    return pair
