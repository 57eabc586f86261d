"""The navigator's pure parts: the collection-points file, rounds, the ETA model and today's status."""

from __future__ import annotations

from datetime import date

import pytest

from cloud_ingest.navi.model import DEFAULT_LEG_S, EtaModel, Visit, hhmm, jst_day, rounds, today
from cloud_ingest.navi.routes import RouteError, geojson, load_routes
from drivers.sim.rounds import route_geojson
from tests.navikit import at_jst

ROUTE = "r1"
GEO = route_geojson([(35.68 + i * 0.002, 139.76) for i in range(6)], ROUTE)
ROUTES = load_routes(GEO)
R = ROUTES[ROUTE]
DAY = date(2026, 10, 6)


def ms(day: date, hour: int, minute: int = 0, second: int = 0) -> int:
    return int(at_jst(day, hour, minute, second) * 1000)


def visit(point: int, at: int, dwell_s: int = 60) -> Visit:
    return Visit(f"cp-{point:02d}", at, at + dwell_s * 1000)


def test_collection_points_file_gives_routes_in_file_order() -> None:
    assert [p.id for p in R.points] == [f"cp-{i:02d}" for i in range(1, 7)]
    assert [p.id for p in R.ahead("cp-05")] == ["cp-06", "cp-01", "cp-02", "cp-03", "cp-04"]
    doc = geojson(ROUTES)
    outline = [f for f in doc["features"] if f["geometry"]["type"] == "LineString"]
    assert len(outline) == 1 and outline[0]["geometry"]["coordinates"][0] == outline[0]["geometry"]["coordinates"][-1]
    assert {f["properties"].get("order") for f in doc["features"]} >= {1, 6}


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"type": "Feature"}, "FeatureCollection"),
        ({"type": "FeatureCollection", "features": [{"geometry": {"type": "LineString"}}]}, "Point"),
        (
            {
                "type": "FeatureCollection",
                "features": [{"geometry": {"type": "Point", "coordinates": [139.7, 95.0]}, "properties": {"id": 1}}],
            },
            "out of range",
        ),
        (
            {
                "type": "FeatureCollection",
                "features": [{"geometry": {"type": "Point", "coordinates": [139.7, 35.6]}, "properties": {"id": 1}}],
            },
            "route",
        ),
    ],
)
def test_a_bad_collection_points_file_is_a_typed_error(doc: dict[str, object], why: str) -> None:
    with pytest.raises(RouteError, match=why):
        load_routes(doc)


def test_a_round_is_the_first_visit_of_each_point_of_the_day_in_jst() -> None:
    visits = [
        visit(2, ms(DAY, 8, 0)),
        visit(3, ms(DAY, 8, 3)),
        visit(2, ms(DAY, 9, 0)),  # the second lap collects nothing new
        visit(9, ms(DAY, 8, 5)),  # not on this route
        visit(4, ms(DAY, 0, 30) - 3_600_000),  # 23:30 JST the day before
    ]
    by_day = rounds(visits, R)
    assert [v.point for v in by_day[DAY]] == ["cp-02", "cp-03"]
    assert by_day[DAY][0].arrived_ms == ms(DAY, 8, 0)
    assert [v.point for v in by_day[date(2026, 10, 5)]] == ["cp-04"]
    assert jst_day(ms(DAY, 0, 0)) == DAY and hhmm(ms(DAY, 9, 41)) == "09:41"


def _history(days: int, leg_s: dict[int, int]) -> list[Visit]:
    """Rounds starting at cp-02 at 08:00; the leg from point i to the next takes leg_s[i] seconds."""
    out = []
    for d in range(days):
        day = date(2026, 9, 1 + d)
        t = ms(day, 8)
        order = [2, 3, 4, 5, 6, 1]
        for p in order:
            out.append(visit(p, t))
            t += leg_s.get(p, 120) * 1000 + (d % 3) * 1000  # a little variance: the median is the middle round
    return out


def test_the_model_learns_the_median_leg_and_falls_back_when_it_knows_nothing() -> None:
    visits = _history(5, {2: 200, 3: 90})
    model = EtaModel.learn(visits, ROUTES)
    assert model.rounds == 5
    assert model.leg_s(ROUTE, "cp-02", "cp-03", ms(DAY, 8)) == 201  # (route, leg, hour): median of 200..202
    assert model.leg_s(ROUTE, "cp-03", "cp-04", ms(DAY, 8)) == 91
    assert model.leg_s(ROUTE, "cp-02", "cp-03", ms(DAY, 15)) == 201  # another hour: the leg at any hour
    assert model.leg_s(ROUTE, "cp-02", "cp-05", ms(DAY, 8)) == 121  # not a leg: the route at that hour
    assert model.leg_s("other", "a", "b", ms(DAY, 8)) == DEFAULT_LEG_S
    assert model.usual_s[(ROUTE, "cp-02")] == 8 * 3600


def test_a_gap_longer_than_an_hour_is_not_a_leg() -> None:
    visits = _history(3, {4: 5000})
    model = EtaModel.learn(visits, ROUTES)
    assert ("r1", "cp-04", "cp-05") not in model.leg


def test_today_before_the_round_everything_is_not_yet_with_the_usual_time() -> None:
    model = EtaModel.learn(_history(5, {}), ROUTES)
    statuses = today(R, [], model, ms(DAY, 7, 30))
    assert {s.status for s in statuses} == {"not_yet"}
    assert statuses[1].usual_s == 8 * 3600 and statuses[1].eta_ms is None


def test_today_during_the_round_collected_points_and_the_truck_on_its_way() -> None:
    model = EtaModel.learn(_history(5, {2: 200}), ROUTES)  # other legs: ~121 s
    visits = [visit(2, ms(DAY, 8, 0)), visit(3, ms(DAY, 8, 3, 21))]
    now = ms(DAY, 8, 4, 30)
    by_point = {s.point: s for s in today(R, visits, model, now)}
    assert by_point["cp-02"].status == "collected" and by_point["cp-02"].collected_ms == ms(DAY, 8)
    assert by_point["cp-03"].status == "collected"
    ahead = {p: (s.stops_away, s.eta_ms) for p, s in by_point.items() if s.status == "on_the_way"}
    assert list(ahead) == ["cp-01", "cp-04", "cp-05", "cp-06"]  # route order; cp-01 comes last (round from cp-02)
    assert ahead["cp-04"] == (1, ms(DAY, 8, 3, 21) + 121_000)
    assert ahead["cp-05"] == (2, ms(DAY, 8, 3, 21) + 242_000)
    assert ahead["cp-01"][0] == 4
    # a visit after "now" is not known yet
    later = today(R, [*visits, visit(4, ms(DAY, 8, 6))], model, now)
    assert next(s for s in later if s.point == "cp-04").status == "on_the_way"


def test_a_late_truck_moves_every_estimate_by_its_delay() -> None:
    model = EtaModel.learn(_history(5, {}), ROUTES)
    visits = [visit(2, ms(DAY, 8, 0))]
    now = ms(DAY, 8, 10)  # the next point was due at ~08:02
    etas = dict(model.etas(R, visits[0], now))
    assert etas["cp-03"] == now
    assert etas["cp-04"] == now + 121_000


def test_a_point_collected_out_of_order_is_skipped_but_the_route_is_driven_through_it() -> None:
    model = EtaModel.learn(_history(5, {}), ROUTES)
    visits = [visit(4, ms(DAY, 7, 50)), visit(2, ms(DAY, 8, 0))]
    by_point = {s.point: s for s in today(R, visits, model, ms(DAY, 8, 1))}
    assert by_point["cp-03"].stops_away == 1
    assert by_point["cp-05"].stops_away == 2  # cp-04 is collected: not counted, but its leg is driven
    assert by_point["cp-05"].eta_ms == ms(DAY, 8) + 3 * 121_000


def test_when_every_point_is_collected_nothing_is_on_its_way() -> None:
    model = EtaModel()
    visits = [visit(p, ms(DAY, 8, p)) for p in range(1, 7)]
    assert {s.status for s in today(R, visits, model, ms(DAY, 9))} == {"collected"}
