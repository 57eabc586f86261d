"""Fix assembly: :class:`FixAssembler` groups one epoch's sentences (same UTC time of day) into a :class:`Fix`.

Each sentence type casts its votes (fix / no fix / simulated, position, altitude, speed, date...) through
:class:`_Epoch`; the assembler then decides whether the epoch is a fix and dates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from drivers.gnss.nmea_sentences import GBS, GGA, GLL, GNS, GPS_ROLLOVER, GSA, GST, KNOT_MPS, RMC, VTG, ZDA, Sentence


@dataclass(frozen=True, slots=True)
class Fix:
    """One position fix assembled from an epoch's sentences. Units: degrees, metres, m/s, degrees true.

    ``time`` is None when no trustworthy date has been seen yet (no valid RMC/ZDA); ``time_of_day`` is always
    known (seconds since UTC midnight).
    """

    time: datetime | None
    time_of_day: float
    lat: float
    lon: float
    alt_m: float | None
    speed_mps: float | None
    course_deg: float | None
    quality: int
    sats: int | None
    hdop: float | None

    @property
    def ts(self) -> float | None:
        """POSIX seconds, or None without a date."""
        return None if self.time is None else self.time.timestamp()

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``kyojo gnss replay``."""
        t = None
        if self.time is not None:
            t = self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {
            "time": t,
            "lat": round(self.lat, 9),
            "lon": round(self.lon, 9),
            "alt_m": self.alt_m,
            "speed_mps": None if self.speed_mps is None else round(self.speed_mps, 4),
            "course_deg": self.course_deg,
            "quality": self.quality,
            "sats": self.sats,
            "hdop": self.hdop,
        }


@dataclass(slots=True)
class AssemblerStats:
    epochs: int = 0
    fixes: int = 0
    no_fix: int = 0  # epochs where a sentence says "no fix" (or nothing says "fix")
    simulated: int = 0  # epochs flagged as simulator / manual input (GGA 7-8, mode S/M)
    placeholder: int = 0  # epochs claiming a fix at exactly 0 N 0 E
    no_date: int = 0  # fixes emitted without a date (time None)
    rollover_corrected: int = 0  # dates moved forward by 1024 weeks

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


#: sentences that carry a UTC time of day (and so delimit epochs)
_TIMED = (GGA, RMC, GLL, GNS, ZDA, GST, GBS)
#: RMC/GLL/GNS mode letter -> GGA-style quality (NMEA 2.3 mode indicator)
_MODE_QUALITY = {"A": 1, "D": 2, "P": 3, "R": 4, "F": 5, "E": 6}
_DEFAULT_DATE_FLOOR = date(2000, 1, 1)


class FixAssembler:
    """Sentences in receiver order -> one :class:`Fix` per epoch that has a valid position.

    An epoch is the run of sentences sharing one UTC time of day; sentences without a time (GSA, GSV, VTG)
    belong to the epoch in progress. The epoch closes when a sentence with another time arrives (or on
    :meth:`flush`), so a fix comes out one sentence after its epoch ends.

    Validity: an epoch is a fix when at least one sentence asserts a fix (GGA quality 1-6, RMC/GLL status A,
    GNS mode with A/D/P/R/F/E) and none asserts the opposite (GGA quality 0, status V, mode N) or a simulated
    or manual position (GGA 7/8, mode S/M: a Garmin in demo mode reports GGA quality 8 and RMC V; such
    positions must never reach a city dashboard unless ``accept_simulated``). A fix at exactly 0 N 0 E is a
    placeholder, not a position.

    Dates: RMC dates are trusted only from status-A sentences, ZDA dates only in epochs that are fixes. Dates
    before ``date_floor`` are GPS week-rollover artefacts (a 10-bit week counter) and move forward in steps of
    1024 weeks until they reach the floor. Epochs without their own date reuse the last one, turning the day
    over at midnight.
    """

    def __init__(self, *, date_floor: date = _DEFAULT_DATE_FLOOR, accept_simulated: bool = False) -> None:
        self.date_floor = date_floor
        self.accept_simulated = accept_simulated
        self.stats = AssemblerStats()
        self._tod: float | None = None
        self._sentences: list[Sentence] = []
        self._keys: set[tuple[str, str]] = set()
        self._last_date: date | None = None
        self._last_tod: float | None = None

    def push(self, s: Sentence) -> Fix | None:
        """Add one sentence; returns the fix of the previous epoch when this sentence starts a new one."""
        fix = None
        if isinstance(s, _TIMED):
            t = s.time
            key = (s.talker, type(s).__name__)
            if (
                (t is not None and self._tod is not None and abs(t - self._tod) > 1e-3)
                or key in self._keys
                or (t is not None and self._tod is None and self._keys)
            ):
                # a new time, or a timed sentence we already have (no-fix receivers leave the time empty)
                fix = self._close()
            if t is not None:
                self._tod = t
            self._keys.add(key)
        self._sentences.append(s)
        return fix

    def flush(self) -> Fix | None:
        """Close the epoch in progress (end of stream, or the line went quiet)."""
        return self._close()

    def reset(self) -> None:
        """Drop the epoch in progress (after a reconnect); keeps the last date and the counters."""
        self._tod = None
        self._sentences = []
        self._keys = set()

    def _rollover(self, d: date) -> date:
        if d >= self.date_floor:
            return d
        while d < self.date_floor:
            d += GPS_ROLLOVER
        self.stats.rollover_corrected += 1
        return d

    def _close(self) -> Fix | None:
        ss, tod = self._sentences, self._tod
        self._sentences, self._tod, self._keys = [], None, set()
        if not ss:
            return None
        self.stats.epochs += 1
        if tod is None:  # only possible without a fix: receivers send empty time fields until they have one
            self.stats.no_fix += 1
            return None
        ep = _Epoch()
        for s in ss:
            ep.vote(s)
        pos = self._position(ep, ss)
        if pos is None:
            return None
        when = self._when(ep.rmc_date or ep.zda_date or (ep.sim_date if ep.sim else None), tod)
        self.stats.fixes += 1
        return ep.fix(when, tod, pos)

    def _position(self, ep: _Epoch, ss: list[Sentence]) -> tuple[float, float] | None:
        """The epoch's position if the votes make it a fix worth emitting; counts why not otherwise."""
        if ep.sim and not self.accept_simulated:
            self.stats.simulated += 1
            return None
        pos = ep.pos
        if ep.sim and pos is None:
            # accepted simulator output: take its position even though the sentences call it void
            for s in ss:
                if isinstance(s, GGA | RMC | GNS | GLL) and s.lat is not None and s.lon is not None:
                    pos = (s.lat, s.lon)
                    break
        fix_ok = (ep.yes or ep.sim) and (not ep.no or ep.sim) and pos is not None
        if not fix_ok or pos is None:
            self.stats.no_fix += 1
            return None
        if pos == (0.0, 0.0):
            self.stats.placeholder += 1
            return None
        return pos

    def _when(self, day: date | None, tod: float) -> datetime | None:
        """The fix's UTC time: the epoch's own date (rollover-corrected) or the last one, else None."""
        if day is not None:
            day = self._rollover(day)
        elif self._last_date is not None and self._last_tod is not None:
            day = self._last_date
            if tod < self._last_tod - 43200.0:  # time went back by more than half a day: midnight passed
                day += timedelta(days=1)
        if day is None:
            self.stats.no_date += 1
            return None
        self._last_date, self._last_tod = day, tod
        return datetime.combine(day, time(0), tzinfo=UTC) + timedelta(seconds=tod)


@dataclass(slots=True)
class _Epoch:
    """What one epoch's sentences say, one :meth:`vote` per sentence: fix / no fix / simulated, and the values.

    Positions rank GN GGA (0) over single-constellation GGA (1), GNS (2), RMC (3) and GLL (4); for the other
    values the first sentence that has one wins, except GGA quality (the highest) and RMC speed and course
    (the last).
    """

    yes: bool = False
    no: bool = False
    sim: bool = False
    pos: tuple[float, float] | None = None
    pos_rank: int = 9
    alt: float | None = None
    speed: float | None = None
    course: float | None = None
    hdop: float | None = None
    gsa_hdop: float | None = None
    vtg_speed: float | None = None
    vtg_course: float | None = None
    quality: int | None = None
    mode_quality: int | None = None
    sats_gn: int | None = None
    sats_by_talker: dict[str, int] = field(default_factory=dict)
    rmc_date: date | None = None
    zda_date: date | None = None
    sim_date: date | None = None

    def vote(self, s: Sentence) -> None:
        if isinstance(s, GGA):
            self._gga(s)
        elif isinstance(s, RMC):
            self._rmc(s)
        elif isinstance(s, GNS):
            self._gns(s)
        elif isinstance(s, GLL):
            self._gll(s)
        elif isinstance(s, VTG):
            self._vtg(s)
        elif isinstance(s, GSA):
            self.gsa_hdop = s.hdop if self.gsa_hdop is None else self.gsa_hdop
        elif isinstance(s, ZDA):
            self.zda_date = s.date or self.zda_date

    def _position(self, lat: float | None, lon: float | None, rank: int) -> None:
        if lat is not None and lon is not None and rank < self.pos_rank:
            self.pos, self.pos_rank = (lat, lon), rank

    def _gga(self, s: GGA) -> None:
        if s.quality is not None and s.quality > 8:
            return  # a quality NMEA 0183 4.11 does not define (0-8): neither a fix nor "no fix"; position unused
        if s.quality is not None:
            if 1 <= s.quality <= 6:
                self.yes = True
                self.quality = s.quality if self.quality is None else max(self.quality, s.quality)
            elif s.quality in (7, 8):
                self.sim = True
            else:
                self.no = True
        if s.quality is not None and s.quality > 0:
            self._position(s.lat, s.lon, 0 if s.talker == "GN" else 1)
            self.alt = s.alt_m if self.alt is None else self.alt
            self.hdop = s.hdop if self.hdop is None else self.hdop
            if s.sats is not None:
                if s.talker == "GN":
                    self.sats_gn = s.sats
                else:
                    self.sats_by_talker[s.talker] = s.sats

    def _rmc(self, s: RMC) -> None:
        if s.status not in ("A", "V"):
            return  # a status letter NMEA 0183 does not define: it neither asserts nor denies a fix
        if s.status == "A" and s.mode not in ("N", "S", "M"):
            self.yes = True
            self._position(s.lat, s.lon, 3)
            self.rmc_date = s.date or self.rmc_date
            self.mode_quality = self.mode_quality or _MODE_QUALITY.get(s.mode or "A")
            self.speed = None if s.speed_knots is None else s.speed_knots * KNOT_MPS
            self.course = s.course_deg
        elif s.mode in ("S", "M"):
            self.sim = True
            self.sim_date = s.date
        else:
            self.no = True

    def _gns(self, s: GNS) -> None:
        modes = set(s.mode)
        if modes & set("ADPRFE"):
            self.yes = True
            self._position(s.lat, s.lon, 2)
            self.alt = s.alt_m if self.alt is None else self.alt
            self.hdop = s.hdop if self.hdop is None else self.hdop
            if self.sats_gn is None and not self.sats_by_talker:
                self.sats_gn = s.sats
            self.mode_quality = self.mode_quality or max(_MODE_QUALITY.get(c, 0) for c in s.mode)
        elif modes & set("SM"):
            self.sim = True
        elif modes == {"N"}:
            self.no = True

    def _gll(self, s: GLL) -> None:
        if s.status not in ("A", "V"):
            return  # as in _rmc
        if s.status == "A" and s.mode not in ("N", "S", "M"):
            self.yes = True
            self._position(s.lat, s.lon, 4)
        elif s.mode in ("S", "M"):
            self.sim = True
        else:
            self.no = True

    def _vtg(self, s: VTG) -> None:
        if s.mode != "N":
            if s.speed_knots is not None:
                self.vtg_speed = s.speed_knots * KNOT_MPS
            elif s.speed_kmh is not None:
                self.vtg_speed = s.speed_kmh / 3.6
            self.vtg_course = s.course_true_deg if self.vtg_course is None else self.vtg_course

    def fix(self, when: datetime | None, tod: float, pos: tuple[float, float]) -> Fix:
        sats: int | None = self.sats_gn if self.sats_gn is not None else (sum(self.sats_by_talker.values()) or None)
        return Fix(
            time=when,
            time_of_day=tod,
            lat=pos[0],
            lon=pos[1],
            alt_m=self.alt,
            speed_mps=self.speed if self.speed is not None else self.vtg_speed,
            course_deg=self.course if self.course is not None else self.vtg_course,
            quality=self.quality if self.quality is not None else (self.mode_quality or 1),
            sats=sats,
            hdop=self.hdop if self.hdop is not None else self.gsa_hdop,
        )
