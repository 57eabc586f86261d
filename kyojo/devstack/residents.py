"""The city's services for residents in ``kyojo demo`` (issue 17): watch-over of a person living alone, safety
status in a disaster, with the real processes and protocols behind them.

- **Watch-over.** ``home-002`` is a person (``p3``) living alone, whose simulated meter (:func:`drivers.sim.
  living_alone`) shows nothing switched on from the evening before the demo until the early afternoon: the
  morning they do not get up. A gateway needs four weeks to learn a home's rhythm before it says anything, so the
  demo replays six weeks of this home's simulated life through the production processor first
  (:func:`seed_watchover`) and starts ``home-002``'s clock a few simulated minutes before the absence is due, so
  it is raised soon after the demo starts. The family signed up on the city's notifier page (``kyojo ingest
  notify``, a real process) with the family code and confirmed by the link in the mail; the notice then reaches
  them over a real SMTP exchange, in :class:`Mailbox` (the family's mail server, an aiosmtpd server in the demo
  process; a dev dependency, as the demo is).
- **Disaster.** The demo's city CA (:func:`city_ca`) signs a declaration for the homes' area; ``kyojo ingest
  declare`` publishes it, retained; each home that granted ``disaster-safety`` answers with its coarse status;
  ``home-001`` pressed "we are safe" on its page (:func:`edge_agent.disaster.press`, what the page's button
  calls). The city's count per area comes from :func:`safety_counts` (``kyojo ingest safety``).
"""

from __future__ import annotations

import email
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

from drivers import sim
from drivers.sim.energy import Meter
from edge_agent.processors.watchover import Config as WatchoverConfig
from edge_agent.processors.watchover import WatchoverProcessor

ALONE = "home-002"
PERSON = "p3"
AREA = "wakamatsu-1"
FAMILY = "musume@family.example.jp"  # the person's daughter, who signed up for the notices
DAY_S = 86_400.0
#: simulated days of the home's life the gateway has seen before the demo (learn 14 + calibrate 14, and more)
SEED_DAYS = 42
#: the absence comes this long (simulated) after home-002's clock starts
LEAD_S = 600.0


@dataclass(frozen=True, slots=True)
class AloneHome:
    """When ``home-002``'s clock starts (``start``), its quiet window, and when its absence is due."""

    start: float
    quiet: tuple[float, float]
    absence_at: float | None


def _meter(quiet: tuple[float, float], seed: int) -> Meter:
    meter = sim.living_alone(ALONE, seed, quiet=quiet)[-1]
    assert isinstance(meter, Meter)
    return meter


def _replay(proc: WatchoverProcessor, meter: Meter, t0: float, t1: float, *, stop_at_absence: bool) -> float | None:
    """Feed ``proc`` the meter's readings of ``(t0, t1]`` day by day; when an absence is raised (and
    ``stop_at_absence``), its time."""
    cur = t0
    while cur < t1:
        nxt = min(cur + (3600.0 if stop_at_absence else DAY_S), t1)
        for event in proc.feed(meter.readings_between(cur, nxt)):
            if stop_at_absence and event.kind == "watchover.absence":
                return event.ts
        cur = nxt
    return None


def watchover_config() -> WatchoverConfig:
    return WatchoverConfig(kind="watchover", meter=f"{ALONE}-meter", subject=PERSON)


def seed_watchover(data_dir: Path, morning: float, seed: int) -> AloneHome:
    """Replay ``SEED_DAYS`` of ``home-002``'s simulated life through the production watch-over processor into
    ``data_dir`` (its learned rhythm and the family code), up to a few simulated minutes before the absence.

    The person switches nothing on from 22:00 the evening before ``morning`` (the demo's 07:55 JST) until 14:00.
    When the absence is raised depends on the home's learned rhythm (the simulated days differ with the date), so
    a first replay finds it and the second one stops :data:`LEAD_S` before it."""
    quiet = (morning - 9.9 * 3600, morning + 6.1 * 3600)
    meter = _meter(quiet, seed)
    begin = quiet[0] - SEED_DAYS * DAY_S
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir.parent) as scratch:
        probe = WatchoverProcessor(watchover_config(), Path(scratch) / f"watchover-{PERSON}.json")
        _replay(probe, meter, begin, quiet[0], stop_at_absence=False)
        absence = _replay(probe, meter, quiet[0], quiet[1], stop_at_absence=True)
    start = morning if absence is None else max(quiet[0], absence - LEAD_S)
    proc = WatchoverProcessor(watchover_config(), data_dir / f"watchover-{PERSON}.json")
    _replay(proc, meter, begin, start, stop_at_absence=False)
    proc.save()
    return AloneHome(start, quiet, absence)


def subject_of(msg: Message) -> str:
    return str(make_header(decode_header(msg["Subject"] or "")))


def body_of(msg: Message) -> str:
    payload = msg.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return payload.decode(msg.get_content_charset() or "utf-8", "replace")


class Mailbox:
    """The family's mail server: an aiosmtpd SMTP server on loopback keeping every message (and a copy as
    ``<dir>/NNN.eml``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._ctl: Any = None
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.content)
        with self._changed:
            n = len(self.messages) + 1
            (self.dir / f"{n:03d}.eml").write_bytes(raw)
            self.messages.append(email.message_from_bytes(raw))
            self._changed.notify_all()
        return "250 OK"

    def start(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as err:  # the demo runs from a checkout with the dev extra (make demo installs it)
            raise RuntimeError("kyojo demo needs aiosmtpd (pip install -e '.[dev]')") from err
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:  # aiosmtpd checks its server by connecting to the port: it must be known
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        ctl = Controller(self, hostname="127.0.0.1", port=self.port)
        ctl.start()
        self._ctl = ctl

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.stop()
            self._ctl = None

    def wait_for(self, pred: Any, timeout: float) -> Message | None:
        """The first message ``pred`` accepts, waiting up to ``timeout`` s for it."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def notices(self) -> list[Message]:
        """The watch-over notices received (they carry an acknowledge link; the sign-up confirmation does not)."""
        with self._lock:
            return [m for m in self.messages if "/ack?t=" in body_of(m)]

    def summary(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"to": str(m["To"]), "subject": subject_of(m)} for m in self.messages]


_LINK = re.compile(r"https?://\S+/confirm\?t=[A-Za-z0-9_\-]+")


def family_signup(page: str, code: str, mailbox: Mailbox, address: str = FAMILY, timeout: float = 30.0) -> bool:
    """Sign ``address`` up on the notifier's page with the family code, and confirm by the link mailed to it
    (double opt-in, as the family does it); True when confirmed."""
    form = urllib.parse.urlencode({"code": code, "email": address, "lang": "ja"}).encode()
    req = urllib.request.Request(page.rstrip("/") + "/signup", data=form, method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own loopback page
        resp.read()
    mail = mailbox.wait_for(lambda m: m["To"] == address and _LINK.search(body_of(m)) is not None, timeout)
    if mail is None:
        return False
    link = _LINK.search(body_of(mail))
    assert link is not None
    with urllib.request.urlopen(link.group(0), timeout=timeout) as resp:  # noqa: S310 - our own loopback page
        return int(resp.status) == 200


# -- disaster ------------------------------------------------------------------------------------------------
def city_ca(ca_dir: Path) -> Any:
    """The demo city's CA (a real one, :func:`provisioning.pki.init_ca`): it signs the disaster declaration."""
    from provisioning import pki

    return pki.init_ca(ca_dir, "Kyojo Demo City CA")


def declare(ca: Any, out: Path, *, issued_at: float, hours: float = 72.0) -> str:
    """Sign a declaration for :data:`AREA` issued at ``issued_at`` (the gateways' simulated time: their clocks
    are not the wall clock's in the demo) and write it to ``out``; its id."""
    decl = ca.declare(AREA, hours, kind="earthquake", now=datetime.fromtimestamp(issued_at, tz=UTC))
    out.write_text(decl.model_dump_json() + "\n", encoding="utf-8")
    return str(decl.id)


def publish_declaration(path: Path, broker_port: int, log: Path) -> None:
    """``kyojo ingest declare FILE`` (the city's downlink): retained on the disaster topic."""
    with log.open("ab") as logf:
        subprocess.run(
            [sys.executable, "-m", "cloud_ingest", "declare", str(path), "--broker-port", str(broker_port)],
            stdout=logf,
            stderr=logf,
            check=True,
            timeout=60,
        )


def safety_counts(influx_url: str, db: str, declaration: str, k: int) -> dict[str, Any]:
    """What ``kyojo ingest safety --declaration ID`` prints: the answers per area (k-anonymous), the households
    that asked to be checked on."""
    from cloud_ingest.erasure import InfluxV1Admin
    from cloud_ingest.safety import latest_statuses, report

    return report(latest_statuses(InfluxV1Admin(influx_url, db), declaration), declaration, k)
