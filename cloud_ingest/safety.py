"""``kyojo ingest safety``: the city's view of a declared disaster (issue 17 section 2), from the ``safety.status``
events the gateways of the area sent under the ``disaster-safety`` purpose (the ingester already checked the
consents and that the purpose carries only ``safety.*`` events).

Per declaration: each household's latest status (by the ingester's ``household`` tag, so a gateway counts once
however many people in it answered), then counts: households that answered, with activity in the last 1/3/12
hours, with power, that pressed "we are safe", that asked to be checked on. A count between 1 and ``k - 1`` is
shown as ``"<k"`` (k-anonymity, as the community rollups): a small group's answers must not single anyone out.

The only households named are those that asked to be checked on and gave the name and address to be found at
with that request (``contact``, typed by the household when pressing the button; nothing else identifies them).

The dashboard. :func:`release_lines` turns a report into points of :data:`MEASUREMENT` (tags ``declaration`` and
``area``; one integer field per count at or above k, the rest left out and counted in ``suppressed``), which
``kyojo ingest safety --write`` stores and the Grafana panel ``safety.by_area`` shows: the panel reads only what
passed the k rule, never the households' own rows, and never the ``check_on`` list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_ingest.erasure import InfluxV1Admin, _lit
from cloud_ingest.lineproto import escape_tag
from cloud_ingest.scope import HOUSEHOLD_TAG

PURPOSE = "disaster-safety"
MEASUREMENT = "city_safety"
COUNTED = ("answered", "active_1h", "active_3h", "active_12h", "power", "safe", "check_on_us")


def latest_statuses(admin: InfluxV1Admin, declaration: str) -> dict[str, dict[str, Any]]:
    """Household tag -> its newest safety.status row under ``declaration``."""
    q = (
        f'SELECT * FROM "events" WHERE "purpose" = {_lit(PURPOSE)} AND "kind" = \'safety.status\' '  # noqa: S608
        f'AND "declaration" = {_lit(declaration)} ORDER BY time'
    )
    out: dict[str, dict[str, Any]] = {}
    for result in admin.query_epoch_ms(q):
        for series in result.get("series", []):
            cols = series["columns"]
            for values in series.get("values", []):
                row = dict(zip(cols, values, strict=True))
                household = row.get(HOUSEHOLD_TAG)
                if isinstance(household, str):
                    out[household] = row  # time-ordered: the newest wins
    return out


def _shown(n: int, k: int) -> int | str:
    return n if n == 0 or n >= k else f"<{k}"


def report(rows: Mapping[str, Mapping[str, Any]], declaration: str, k: int) -> dict[str, Any]:
    """Counts per area (k-anonymous) and the households that asked to be checked on and gave where."""
    per_area: dict[str, dict[str, int]] = {}
    check: list[dict[str, Any]] = []
    for row in rows.values():
        area = str(row.get("area") or "?")
        counts = per_area.setdefault(area, dict.fromkeys(COUNTED, 0))
        counts["answered"] += 1
        for key in COUNTED[1:]:
            if row.get(key) is True:
                counts[key] += 1
        contact = row.get("contact")
        if row.get("check_on_us") is True and isinstance(contact, str) and contact.strip():
            check.append({"area": area, "contact": contact.strip(), "at_ms": int(row["time"])})
    return {
        "declaration": declaration,
        "k": k,
        "areas": {a: {key: _shown(n, k) for key, n in c.items()} for a, c in sorted(per_area.items())},
        "check_on": sorted(check, key=lambda c: c["at_ms"]),
    }


def release_lines(rep: Mapping[str, Any], at_ms: int) -> list[str]:
    """The report's k-anonymous counts as line protocol (ms precision): one point per area, at ``at_ms``."""
    out: list[str] = []
    tag = escape_tag(str(rep["declaration"]))
    for area, counts in rep["areas"].items():
        shown = {key: n for key, n in counts.items() if isinstance(n, int)}
        fields = [f"{key}={n}i" for key, n in shown.items()]
        fields += [f"suppressed={len(counts) - len(shown)}i", f"k={int(rep['k'])}i"]
        out.append(f"{MEASUREMENT},area={escape_tag(area)},declaration={tag} {','.join(fields)} {at_ms}")
    return out
