"""``[[processors]] kind = "watchover"``: a person living alone shows no sign of life for longer than is usual.

Feeds the whole-home meter's power (as 1-minute means) and the switching-on of strong-signal plugs (kettle,
microwave, TV, rice cooker) to :class:`models.watchover.rhythm.Watch`, which learns this home's daily rhythm on
the gateway, and turns what it finds into Events of category ``wellbeing``:

- ``watchover.absence`` (severity ``warning``; the same episode again as ``urgent`` when it gets much longer),
- ``watchover.resumed`` (``info``) at the next sign of life.

An event carries only the evidence (since when it has been quiet, the usual hours that passed without activity,
what the last sign of life was, the score against the home's own threshold), never the power data. It leaves the
gateway only under a ``watchover-family`` consent (the catalog restricts that purpose to ``watchover.*``
events). The learned rhythm is kept in ``watchover-<subject>.json`` (a damaged file is set aside and learning
starts again, counted in ``state_resets``).

The family code. The person's family signs up for the notices on the city's notifier page with a code the
household gives them (``kyojo consent family-code``; kept in ``watchover-<subject>.code``, mode 0600). Events
carry only ``family_key``, a one-way hash of it (:func:`kyojo.contract.wire.family_key`), so neither the
gateway nor the city's database ever holds the family's e-mail addresses next to the home, and an analyst who
sees the events cannot sign up as family.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from kyojo.contract.vocab import Category, Event, Reading
from kyojo.contract.wire import FAMILY_ALPHABET, family_key
from kyojo.runtime.files import atomic_write_text
from models.watchover.rhythm import ActivityDetector, Finding, Params, Watch

if TYPE_CHECKING:
    from drivers.registry import BuildContext

log = logging.getLogger(__name__)

SAVE_EVERY_S = 600.0
KINDS = {"absence": ("watchover.absence", "warning"), "urgent": ("watchover.absence", "urgent")}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["watchover"]
    meter: str = Field(description="device id of the whole-home meter")
    subject: str = Field(description="the person living alone (subject of the watchover-family consent)")
    signals: dict[str, str] = Field(
        default_factory=dict, description="plug device id -> appliance whose switching on is a sign of life"
    )
    timezone: str = Field(default="Asia/Tokyo", description="the home's local time, for its daily rhythm")
    step_w: float = Field(default=250.0, gt=0, description="a meter step this large is activity (W)")
    plug_on_w: float = Field(default=30.0, gt=0, description="a signal plug above this is switched on (W)")
    learn_days: int = Field(default=14, ge=1, le=60)
    calibrate_days: int = Field(default=14, ge=1, le=60)

    def params(self) -> Params:
        return Params(step_w=self.step_w, learn_days=self.learn_days, calibrate_days=self.calibrate_days)


def family_code(data_dir: Path, subject: str) -> str:
    """The person's family code (``XXXX-XXXX-XXXX-XXXX``, 80 random bits), made on first use."""
    path = data_dir / f"watchover-{subject}.code"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    raw = "".join(secrets.choice(FAMILY_ALPHABET) for _ in range(16))
    code = "-".join(raw[i : i + 4] for i in range(0, 16, 4))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made by another process (the agent, the web page) just now
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(code + "\n")
    return code


class WatchoverProcessor:
    name = "watchover"
    category: Category | None = None  # Events only
    lag_s = 0.0

    def __init__(self, config: Config, state_path: Path) -> None:
        self.config = config
        self.state_path = state_path
        self.family_key = family_key(family_code(state_path.parent, config.subject))
        self.state_resets = 0
        self.watch = self._load()
        self.detector = ActivityDetector(config.step_w)
        self._minute: int | None = None  # start (s) of the minute being averaged
        self._sum = 0.0
        self._n = 0
        self._signal: str | None = None  # a plug switched on during the open minute
        self._plug_w: dict[str, float] = {}
        self._saved = time.monotonic()
        self.minutes = 0
        self.events = 0
        self.last_power: float | None = None  # when the meter last reported power above zero (disaster status)

    def _load(self) -> Watch:
        tz, params = self.config.timezone, self.config.params()
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            return Watch.from_json(doc, tz, params)
        except FileNotFoundError:
            return Watch(tz, params)
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.state_resets += 1
            aside = self.state_path.with_suffix(".damaged")
            log.warning("watch-over state %s unreadable (%s): kept as %s, learning again", self.state_path, err, aside)
            self.state_path.replace(aside)
            return Watch(tz, params)

    def save(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.watch.to_json()), mode=0o600)
        self._saved = time.monotonic()

    def feed(self, readings: Sequence[Reading]) -> list[Event]:
        out: list[Event] = []
        for r in sorted((r for r in readings if r.metric == "power"), key=lambda r: r.ts):
            if r.device in self.config.signals:
                before = self._plug_w.get(r.device, 0.0)
                self._plug_w[r.device] = r.value
                if r.value >= self.config.plug_on_w > before:
                    self._signal = self.config.signals[r.device]
                continue
            if r.device != self.config.meter:
                continue
            if r.value > 0:
                self.last_power = r.ts
            minute = int(r.ts // 60) * 60
            if self._minute is None:
                self._minute = minute
            elif minute < self._minute:
                continue  # late: its minute was already judged
            elif minute > self._minute:
                out += self._close(minute)
            self._sum += r.value
            self._n += 1
        if out or time.monotonic() - self._saved >= SAVE_EVERY_S:
            self.save()
        return out

    def _close(self, next_minute: int) -> list[Event]:
        """Judge the open minute and the unmeasured ones up to ``next_minute``; open ``next_minute``."""
        assert self._minute is not None
        mean = self._sum / self._n if self._n else None
        active = self.detector.minute(mean)
        signal: str | None = "meter" if active else None
        if self._signal is not None:
            active, signal, self._signal = True, self._signal, None
        found = self.watch.push(self._minute, measured=mean is not None, active=active, signal=signal)
        self.minutes += 1
        gap = (next_minute - self._minute) // 60 - 1
        for k in range(1, min(gap, 7 * 1440) + 1):  # a long outage is judged as unmeasured, at most a week of it
            found += self.watch.push(self._minute + 60 * k, measured=False, active=False)
            self.detector.minute(None)
        self._minute, self._sum, self._n = next_minute, 0.0, 0
        return [self._event(f) for f in found]

    def _event(self, f: Finding) -> Event:
        kind, severity = KINDS.get(f.kind, ("watchover.resumed", "info"))
        self.events += 1
        digest = hashlib.sha256(f"{self.config.subject}|{f.since:.0f}|{f.kind}".encode()).hexdigest()[:16]
        attrs: dict[str, str | float | int | bool] = {
            "quiet_min": int(f.quiet_s // 60),
            "since_ms": int(f.since * 1000),
            "usual_hours": ",".join(f"{h:02d}" for h in f.usual),
            "score": round(f.score, 2),
            "threshold": round(f.threshold, 2),
            "family_key": self.family_key,
        }
        if f.signal is not None:
            attrs["last_signal"] = f.signal
        return Event(
            id=f"wo-{digest}",
            kind=kind,
            category=Category.WELLBEING,
            subject=self.config.subject,
            device=self.config.meter,
            ts=f.at,
            severity=severity,
            attrs=attrs,
        )

    def health(self) -> Mapping[str, object]:
        w = self.watch
        quiet = (
            None if w.last_activity is None or self._minute is None else round((self._minute - w.last_activity) / 60)
        )
        return {
            "learning": w.threshold is None,
            "days_seen": sum(1 for d in w.days.values() if d.complete),
            "minutes": self.minutes,
            "events": self.events,
            "quiet_min": quiet,
            "absence_open": w.open is not None,
            "state_resets": self.state_resets,
        }


def build(config: Config, ctx: BuildContext) -> WatchoverProcessor:
    return WatchoverProcessor(config, ctx.data_dir / f"watchover-{config.subject}.json")
