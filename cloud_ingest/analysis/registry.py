"""The ONE registry of canned InfluxQL (:data:`QUERIES`) that the Grafana dashboards and ``kyojo query`` share.

Query text uses Grafana's macros (``$timeFilter``, ``$__interval``, ``$subject``, ``$instance``); see
:mod:`cloud_ingest.analyst` for the point schema the queries rely on.
"""

# ruff: noqa: S608 - the InfluxQL here is constant templates; the only inputs (variables) are regex-checked

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Smallest GROUP BY interval: windows are one minute (30 s for mobility), finer buckets are empty.
MIN_INTERVAL = "1m"
#: Defaults of the dashboard variables outside Grafana (all pseudonyms, all ingester instances).
DEFAULT_VARS: Mapping[str, str] = {"subject": ".*", "instance": ".*"}
#: Alert kinds the preventive-care processor raises (event kind ``alert.<kind>``: models/rules/engine.py and the AF
#: model); ``kyojo ingest rollup --events 'alert.*'`` releases each as ``community_alert_<kind>``.
ALERT_KINDS = (
    "bp_crisis",
    "bp_category",
    "spo2_low",
    "tachycardia",
    "bradycardia",
    "fever",
    "fasting_glucose",
    "atrial_fibrillation",
)

_TF = "$timeFilter"


@dataclass(frozen=True)
class CannedQuery:
    """One named query: InfluxQL statements (one Grafana target each) and how to show the result.

    ``statements`` with more than one entry are merged row by row on (time, tags), like Grafana's *Merge*
    transformation (e.g. latitude and longitude into one position). ``unit`` is a Grafana unit id; ``plot`` is
    how ``--plot`` draws it: ``line``, ``bar`` or ``map`` (longitude/latitude scatter).
    """

    name: str
    title: str
    description: str
    statements: tuple[str, ...]
    unit: str = "none"
    plot: str = "line"
    alias: str = "$col $tag_subject"
    result_format: str = "time_series"


def _q(
    name: str,
    title: str,
    description: str,
    *statements: str,
    unit: str = "none",
    plot: str = "line",
    alias: str = "$col $tag_subject",
    result_format: str = "time_series",
) -> CannedQuery:
    return CannedQuery(name, title, description, tuple(statements), unit, plot, alias, result_format)


def _purpose(p: str) -> str:
    return f'"purpose" = \'{p}\' AND "subject" =~ /^$subject$/ AND {_TF}'


_ENERGY = _purpose("community-energy")
_EV = _purpose("ev-energy-sharing")
_WASTE = _purpose("waste-collection")
#: pickup events the trucks' ``truck`` processor released (one per stop matched to a collection point)
_PICKUPS = f'FROM "events" WHERE "kind" = \'pickup\' AND {_WASTE}'
_INSTANCE = f'"instance" =~ /^$instance$/ AND {_TF}'
_ALERTS = f"\"purpose\" = 'preventive-care' AND \"bucket\" = '604800s' AND {_TF}"

QUERIES: dict[str, CannedQuery] = {
    q.name: q
    for q in (
        # --- home energy -------------------------------------------------------------------------------------
        _q(
            "energy.whole_vs_appliances",
            "Whole home vs appliances",
            "Per household: the whole-home meter (the largest power series of the minute), the plugged "
            "appliances (the other series, summed) and the rest (unmetered base load).",
            'SELECT mean("whole") AS "whole_home", mean("plugs") AS "appliances", '
            'mean("whole") - mean("plugs") AS "unmetered" FROM ('
            'SELECT max("mean") AS "whole", sum("mean") - max("mean") AS "plugs" FROM "power" '
            f'WHERE {_ENERGY} GROUP BY time(1m), "subject") '
            f'WHERE {_TF} GROUP BY time($__interval), "subject"',
            unit="watt",
        ),
        _q(
            "energy.by_hour",
            "Whole-home energy by hour",
            "Per household and hour: the sum of the whole-home meter's per-minute deltas (Wh).",
            'SELECT sum("whole") AS "energy" FROM ('
            f'SELECT max("delta") AS "whole" FROM "energy" WHERE {_ENERGY} GROUP BY time(1m), "subject") '
            f"WHERE {_TF} GROUP BY time(1h), \"subject\" fill(none) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
        ),
        _q(
            "energy.by_device",
            "Energy by device",
            "Per device pseudonym over the range: sum of deltas (Wh); the largest is the whole-home meter.",
            f'SELECT sum("delta") AS "energy" FROM "energy" WHERE {_ENERGY} GROUP BY "subject", "device"',
            unit="watth",
            plot="bar",
            alias="$tag_device",
            result_format="table",
        ),
        _q(
            "energy.community",
            "Community energy (k-anonymous)",
            "Released community rollups (at least k households, no household above the dominance share): "
            "total Wh per hour and households contributing.",
            'SELECT sum("total") AS "total", max("households") AS "households" FROM "community_energy" '
            f"WHERE \"purpose\" = 'community-energy' AND \"bucket\" = '3600s' AND {_TF} "
            "GROUP BY time(1h) fill(none) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
            alias="$col",
        ),
        # --- EV charging -------------------------------------------------------------------------------------
        _q(
            "ev.energy_by_hour",
            "EV charging energy by hour",
            "Per charger's household and hour: sum of ev_energy deltas (Wh).",
            f'SELECT sum("delta") AS "energy" FROM "ev_energy" WHERE {_EV} '
            "GROUP BY time(1h), \"subject\" fill(0) tz('Asia/Tokyo')",
            unit="watth",
            plot="bar",
        ),
        _q(
            "ev.power",
            "EV charging power",
            "Mean charging power (W) per household.",
            f'SELECT mean("mean") AS "power" FROM "ev_power" WHERE {_EV} GROUP BY time($__interval), "subject"',
            unit="watt",
        ),
        _q(
            "ev.soc",
            "State of charge while charging",
            "Mean state of charge (%) of the connected car; no point when no car is connected.",
            f'SELECT mean("mean") AS "soc" FROM "soc" WHERE {_EV} GROUP BY time($__interval), "subject"',
            unit="percent",
        ),
        _q(
            "ev.sessions",
            "Charging sessions per day",
            "Sessions starting per local day (JST): minutes with a car connected (soc reported) that follow a "
            "minute without one.",
            'SELECT count("d") AS "sessions" FROM ('
            'SELECT difference("charging") AS "d" FROM ('
            f'SELECT count("last") AS "charging" FROM "soc" WHERE {_EV} GROUP BY time(1m), "subject" fill(0)'
            f')) WHERE "d" > 0 AND {_TF} GROUP BY time(1d), "subject" tz(\'Asia/Tokyo\')',
            plot="bar",
        ),
        _q(
            "ev.availability",
            "Charger availability",
            "Share of reported minutes in which the charger was free (no power drawn), per hour (%).",
            'SELECT 100 * (1 - mean("busy")) AS "available" FROM ('
            f'SELECT ceil("max" / 1000000) AS "busy" FROM "ev_power" WHERE {_EV}) '
            f"WHERE {_TF} GROUP BY time(1h), \"subject\" fill(none) tz('Asia/Tokyo')",
            unit="percent",
            plot="bar",
        ),
        # --- waste collection --------------------------------------------------------------------------------
        _q(
            "waste.positions",
            "Truck positions",
            "Last position of each truck per interval (latitude and longitude merged on time and truck).",
            f'SELECT last("last") AS "latitude" FROM "latitude" WHERE {_WASTE} '
            'GROUP BY time($__interval), "subject" fill(none)',
            f'SELECT last("last") AS "longitude" FROM "longitude" WHERE {_WASTE} '
            'GROUP BY time($__interval), "subject" fill(none)',
            unit="degree",
            plot="map",
            result_format="table",
        ),
        _q(
            "waste.pickups",
            "Pickups per truck and hour",
            "Pickup events per truck (pseudonym; a truck drives one route) and hour: each is a stop the gateway "
            "matched to a collection point (dwell of at least 20 s within 30 m of it).",
            f'SELECT count("event_id") AS "pickups" {_PICKUPS} GROUP BY time(1h), "subject" fill(0) tz(\'Asia/Tokyo\')',
            plot="bar",
        ),
        _q(
            "waste.progress",
            "Route progress",
            "Latest route progress per truck, from its last pickup event: the route, the collection points served "
            "so far and on the route, the share served, and the last point served.",
            'SELECT last("route") AS "route", last("served") AS "served", last("points") AS "points", '
            f'last("progress") AS "progress", last("point") AS "last_point" {_PICKUPS} GROUP BY "subject"',
            unit="percentunit",
            plot="bar",
            result_format="table",
        ),
        # --- preventive care: k-anonymous rollups only -------------------------------------------------------
        _q(
            "care.alerts_by_week",
            "Alerts by kind and week (k-anonymous)",
            "Weekly community rollups of preventive-care alerts, one series per kind; weeks with fewer than k "
            "households (or a dominant one) were suppressed by the rollup and are absent.",
            f'SELECT sum("total") AS "alerts" FROM /^community_alert_/ WHERE {_ALERTS} GROUP BY time(1w) fill(none)',
            plot="bar",
            alias="$m",
        ),
        _q(
            "care.households_by_week",
            "Households behind each weekly release",
            "Households contributing to each released weekly rollup (always at least k).",
            f'SELECT max("households") AS "households" FROM /^community_alert_/ WHERE {_ALERTS} '
            "GROUP BY time(1w) fill(none)",
            plot="bar",
            alias="$m",
        ),
        # --- disaster safety: k-anonymous counts only ----------------------------------------------------------
        _q(
            "safety.by_area",
            "Safety answers per area (k-anonymous)",
            "Per declared disaster and area, the latest count of households that answered, showed activity in the "
            "last 1/3/12 hours, have power, pressed 'we are safe' or asked to be checked on (kyojo ingest safety "
            "--write). Counts below k are left out (blank) and counted in 'suppressed'; who asked to be checked on "
            "is only in the city's list (kyojo ingest safety), never here.",
            'SELECT last("answered") AS "answered", last("safe") AS "safe", last("check_on_us") AS "check_on_us", '
            'last("active_1h") AS "active_1h", last("active_3h") AS "active_3h", last("active_12h") AS "active_12h", '
            f'last("power") AS "power", last("suppressed") AS "suppressed" FROM "city_safety" WHERE {_TF} '
            'GROUP BY "declaration", "area"',
            plot="bar",
            result_format="table",
        ),
        _q(
            "safety.answered",
            "Households that answered, over time",
            "Per area, households that answered the declaration, as each round of kyojo ingest safety --write "
            "counted them (blank where fewer than k).",
            f'SELECT last("answered") AS "answered" FROM "city_safety" WHERE {_TF} '
            'GROUP BY time($__interval), "area" fill(none)',
            alias="$tag_area",
        ),
        # --- platform health ---------------------------------------------------------------------------------
        _q(
            "platform.gateways_online",
            "Gateways online",
            "Gateways whose retained status says online, as the ingesters see it (they all see every status: "
            "the largest per interval).",
            'SELECT max("online") AS "gateways_online" FROM ('
            f'SELECT last("gateways_online") AS "online" FROM "kyojo_ingest" WHERE {_INSTANCE} '
            f'GROUP BY time($__interval), "instance") WHERE {_TF} GROUP BY time($__interval) fill(none)',
            alias="$col",
        ),
        _q(
            "platform.ingest_rate",
            "Ingest rate",
            "Points written to InfluxDB per second, per ingester instance.",
            'SELECT non_negative_derivative(max("written"), 1s) AS "points_per_s" FROM "kyojo_ingest" '
            f'WHERE {_INSTANCE} GROUP BY time($__interval), "instance" fill(none)',
            unit="pps",
            alias="$col $tag_instance",
        ),
        _q(
            "platform.rejects_by_cause",
            "Rejected messages by cause",
            "Messages the ingesters refused, per cause (summed over instances).",
            'SELECT sum("count") AS "rejected" FROM "kyojo_ingest_rejects" '
            f'WHERE {_INSTANCE} GROUP BY time($__interval), "cause" fill(none)',
            plot="bar",
            alias="$tag_cause",
        ),
        _q(
            "platform.lag",
            "Ingest lag",
            "Time from a batch being queued on the gateway to being written (ms), worst per interval.",
            f'SELECT max("lag_ms") AS "lag" FROM "kyojo_ingest" WHERE {_INSTANCE} '
            'GROUP BY time($__interval), "instance" fill(none)',
            unit="ms",
            alias="$col $tag_instance",
        ),
        # --- data sanity -------------------------------------------------------------------------------------
        _q(
            "sanity.peak_power",
            "Largest one-minute energy step (as kW)",
            "Per household: the largest per-minute energy delta of any device, as average kW over that minute. "
            "A spike shows as a peak far above the household's usual level; the gateway and the ingester refuse "
            "steps above the supply's ceiling (100 kW for a meter), so this stays below it.",
            f'SELECT max("delta") * 0.06 AS "peak_kw" FROM "energy" WHERE {_ENERGY} '
            'GROUP BY time($__interval), "subject" fill(none)',
            unit="kwatt",
        ),
        _q(
            "sanity.reporting_minutes",
            "Minutes reported per hour (60 = no gap)",
            "Per household and hour (JST): minutes with an energy window. Fewer than 60 is a gap: a gateway "
            "offline, a meter not answering, or windows withheld (consent, grace).",
            'SELECT count("delta") AS "minutes" FROM ('
            f'SELECT max("delta") AS "delta" FROM "energy" WHERE {_ENERGY} GROUP BY time(1m), "subject") '
            f"WHERE {_TF} GROUP BY time(1h), \"subject\" fill(0) tz('Asia/Tokyo')",
            plot="bar",
        ),
    )
}

#: Japanese panel titles, shown beside the English ones on the dashboards (and in ``kyojo query list``).
TITLES_JA: Mapping[str, str] = {
    "energy.whole_vs_appliances": "家全体と家電の電力",
    "energy.by_hour": "家全体の時間別電力量",
    "energy.by_device": "機器別の電力量",
    "energy.community": "地域の電力量（k匿名）",
    "ev.energy_by_hour": "EV充電の時間別電力量",
    "ev.power": "EV充電電力",
    "ev.soc": "充電中の充電率",
    "ev.sessions": "1日あたりの充電回数",
    "ev.availability": "充電器の空き状況",
    "waste.positions": "収集車の位置",
    "waste.pickups": "収集車・時間別の収集件数",
    "waste.progress": "ルートの進捗",
    "care.alerts_by_week": "週・種類別のアラート件数（k匿名）",
    "care.households_by_week": "週ごとの集計に含まれる世帯数",
    "safety.by_area": "地域ごとの安否回答（k匿名）",
    "safety.answered": "回答した世帯数の推移",
    "platform.gateways_online": "オンラインのゲートウェイ",
    "platform.ingest_rate": "取り込み速度",
    "platform.rejects_by_cause": "拒否されたメッセージ（原因別）",
    "platform.lag": "取り込みの遅延",
    "sanity.peak_power": "1分間の最大電力量ステップ（kW換算）",
    "sanity.reporting_minutes": "1時間あたりの報告分数（60＝欠損なし）",
}


def bilingual(name: str) -> str:
    """``English · 日本語`` title of a canned query."""
    return f"{QUERIES[name].title} · {TITLES_JA[name]}"
