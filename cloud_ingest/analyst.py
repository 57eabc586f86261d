"""Analyst queries: ONE registry of canned InfluxQL shared by the Grafana dashboards and ``kyojo query``.

Every panel of every dashboard in ``dashboards/json/`` is generated from this module (``python -m
cloud_ingest.analyst generate``; a test checks that the committed JSON equals what this module produces), so a
query that an analyst runs on the command line is byte for byte the query behind the panel.
Query text uses Grafana's macros, which :func:`render` substitutes outside Grafana:

- ``$timeFilter`` -> ``time >= <since>ms AND time <= <until>ms``;
- ``$__interval`` -> the GROUP BY interval (Grafana: range / panel width, never below the panel's 1m minimum);
- ``$subject``, ``$instance`` -> dashboard variables, a regex (``.*`` = all) used as ``=~ /^$subject$/``.

Point schema the queries rely on (README, Analysts): measurement = metric, tags ``subject`` (per-purpose
pseudonym), ``device`` (per-purpose pseudonym), ``purpose``, ``category``; fields ``count``/``mean``/``min``/
``max``/``last`` (gauges) or ``delta``/``last`` (counters), ``window_s``; time = window start. No query uses the
``gateway`` tag (it is being removed: it would let an analyst join a household's purposes). Health data is
shown only as k-anonymous community rollups (``community_alert_<kind>``), never per subject.

Dashboards: home energy, EV charging, waste collection, preventive care, platform health. The platform panels
read ``kyojo_ingest``/``kyojo_ingest_rejects``, written from the ingester's stats (see
:mod:`cloud_ingest.initdb`).

``kyojo query <name>`` (mounted by :func:`register`) prints a canned query's result as a table, CSV or JSON and
can plot it to a PNG with matplotlib (Agg, no display needed; install the ``analyst`` extra).

The parts live in :mod:`cloud_ingest.analysis`: ``registry`` (the canned queries), ``grafana`` (dashboard JSON),
``run`` (rendering and running a query against InfluxDB), ``plot`` (PNG) and ``cli`` (``kyojo query``). This
module re-exports their public names and is the ``python -m cloud_ingest.analyst generate`` entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_ingest.analysis.cli import parse_time, register
from cloud_ingest.analysis.grafana import (
    DASHBOARDS,
    DATASOURCE,
    DATASOURCE_UID,
    SCHEMA_VERSION,
    Dashboard,
    Panel,
    Variable,
    dashboard_files,
    dashboard_json,
    generate,
)
from cloud_ingest.analysis.plot import plot
from cloud_ingest.analysis.registry import ALERT_KINDS, DEFAULT_VARS, MIN_INTERVAL, QUERIES, CannedQuery
from cloud_ingest.analysis.run import InfluxQL, QueryError, Result, auto_interval, format_result, render, run_query

__all__ = [
    "ALERT_KINDS",
    "DASHBOARDS",
    "DATASOURCE",
    "DATASOURCE_UID",
    "DEFAULT_VARS",
    "MIN_INTERVAL",
    "QUERIES",
    "SCHEMA_VERSION",
    "CannedQuery",
    "Dashboard",
    "InfluxQL",
    "Panel",
    "QueryError",
    "Result",
    "Variable",
    "auto_interval",
    "dashboard_files",
    "dashboard_json",
    "format_result",
    "generate",
    "main",
    "parse_time",
    "plot",
    "register",
    "render",
    "run_query",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cloud_ingest.analyst generate [DIR]``: regenerate the dashboard JSON files and, next to them,
    ``provisioning/alerting/kyojo.yaml`` (the alert rules)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "generate":
        print("usage: python -m cloud_ingest.analyst generate [dashboards/json]", file=sys.stderr)
        return 2
    dash = Path(__file__).resolve().parent.parent / "dashboards"
    out = Path(args[1]) if len(args) > 1 else dash / "json"
    alerting = out.parent / "provisioning" / "alerting" / "kyojo.yaml"
    for path in generate(out, alerting):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
