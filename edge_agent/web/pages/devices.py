"""``/devices``: the home's health devices and smart plugs -- scan, pair, name, give to a person, remove.

Every action goes through :class:`edge_agent.web.pairing.PairingService`, which runs ``kyojo pair``'s code paths as
background jobs of this process (one per app, made on first use). The page works without JavaScript (forms post,
the job page refreshes itself); with htmx the scan's and the pairing's progress are fragments polled every second
(``hx-trigger="every 1s"``) until the job ends, when the fragment comes back without the trigger.

Routes (all behind the session guard; POSTs carry the CSRF token):

- ``GET /devices``: the list, the scan button, the running job if any (``?job=ID``);
- ``POST /devices/scan``; ``GET /devices/jobs/{job}`` (the job fragment, or the whole page without htmx);
- ``POST /devices/pair``: a BLE device (starts a pairing job) or a plug (names its appliance at once);
- ``POST /devices/{device}/edit`` (name, person); ``POST /devices/{device}/remove``.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from edge_agent.web import household
from edge_agent.web.pairing import DeviceView, Job, PairingProblem, PairingService, ProblemKind
from edge_agent.web.site import site_of
from edge_agent.web.templating import N_, gettext, render
from edge_agent.web.wording import APPLIANCE_NAMES, APPLIANCES  # one vocabulary with `kyojo pair plugs`

log = logging.getLogger(__name__)

#: what each problem means and what to do next (message ids; ja in the catalog)
PROBLEMS: dict[ProblemKind, tuple[str, str]] = {
    ProblemKind.out_of_range: (
        N_("The gateway could not find the device."),
        N_(
            "Switch the device on and bring it within a few metres of the gateway. Many devices only show "
            "themselves for a minute after a measurement or after you press their Bluetooth button. Then try again."
        ),
    ),
    ProblemKind.bonding_refused: (
        N_("The device did not let the gateway pair with it."),
        N_(
            "Put the device in pairing mode (usually: hold its Bluetooth button until the symbol blinks; see its "
            "manual), then try again within a minute."
        ),
    ),
    ProblemKind.pin_wrong: (
        N_("The PIN did not match."),
        N_(
            "Check the PIN shown on the device's screen or printed on its back or in its box, and try again. "
            "If it keeps failing, remove the gateway from the device's own list of paired phones first."
        ),
    ),
    ProblemKind.already_paired: (
        N_("This device is already set up on this gateway."),
        N_("You can find it in the list below. To give it to someone else, change its person there."),
    ),
    ProblemKind.timeout: (
        N_("Pairing took too long and was stopped."),
        N_("Bring the device closer to the gateway, make sure it is awake, and try again."),
    ),
    ProblemKind.wrong_profile: (
        N_("This device does not send a kind of measurement Kyojo can read."),
        N_("Kyojo reads heart rate, blood pressure, temperature, glucose, oxygen and weight devices."),
    ),
    ProblemKind.no_adapter: (
        N_("The gateway's Bluetooth is switched off."),
        N_("Restart the gateway. If this stays, ask the person who installed it to check its Bluetooth."),
    ),
    ProblemKind.link_failed: (
        N_("The connection to the device broke off."),
        N_("Bring the device closer to the gateway and try again."),
    ),
    ProblemKind.no_plugs: (
        N_("This gateway is not set up for smart plugs."),
        N_("Ask the person who installed the gateway to connect your home's plugs."),
    ),
    ProblemKind.bad_input: (
        N_("Something you entered cannot be used."),
        N_("Check the name (at most 40 characters) and who the device belongs to, and try again."),
    ),
    ProblemKind.busy: (
        N_("The gateway is already looking for devices."),
        N_("Wait until it has finished (a few seconds), then try again."),
    ),
    ProblemKind.not_found: (
        N_("This device is no longer on this gateway."),
        N_("The list below shows the devices that are."),
    ),
}

#: a device's kind of measurement, for people (message ids)
PROFILE_NAMES: dict[str, str] = {
    "heart_rate": N_("heart rate monitor"),
    "blood_pressure": N_("blood pressure monitor"),
    "thermometer": N_("thermometer"),
    "glucose": N_("glucose meter"),
    "pulse_oximeter": N_("pulse oximeter"),
    "weight_scale": N_("scale"),
    "body_composition": N_("body composition scale"),
}

METRIC_UNITS: dict[str, str] = {
    "heart_rate": "bpm",
    "pulse_rate": "bpm",
    "systolic": "mmHg",
    "diastolic": "mmHg",
    "mean_arterial_pressure": "mmHg",
    "body_temperature": "°C",
    "glucose": "mg/dL",
    "spo2": "%",
    "weight": "kg",
    "body_fat": "%",
    "power": "W",
}

METRIC_NAMES: dict[str, str] = {
    "heart_rate": N_("heart rate"),
    "pulse_rate": N_("pulse"),
    "systolic": N_("blood pressure (upper)"),
    "diastolic": N_("blood pressure (lower)"),
    "mean_arterial_pressure": N_("mean blood pressure"),
    "body_temperature": N_("temperature"),
    "glucose": N_("glucose"),
    "spo2": N_("oxygen"),
    "weight": N_("weight"),
    "body_fat": N_("body fat"),
    "power": N_("power"),
    "voltage": N_("voltage"),
    "current": N_("current"),
    "rr_interval": N_("beat interval"),
}

NEW_PERSON = "__new__"


def service_of(request: Request) -> PairingService:
    """The app's pairing service (made on first use, kept on the app)."""
    state = request.app.state
    svc: PairingService | None = getattr(state, "pairing", None)
    if svc is None:
        site = site_of(request)
        svc = PairingService(site.config_path, site.web_db)
        state.pairing = svc
    return svc


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _people(request: Request) -> list[household.Person]:
    site = site_of(request)
    with site.agent_db() as conn:
        people = household.people(site.web_db, site.config, conn)
    known = {p.id for p in people}
    extra = [household.Person(s, household.name_of(site.web_db, s)) for s in service_of(request).owners() - known]
    return sorted([*people, *extra], key=lambda p: p.id)


def _title(request: Request, view: DeviceView, people: dict[str, str]) -> str:
    """The device as people say it: "お父さんの血圧計"; a plug by what it powers ("冷蔵庫")."""
    _ = gettext(request)
    names = PROFILE_NAMES if view.kind == "ble" else APPLIANCE_NAMES
    what = view.label or (_(names[view.model]) if view.model in names else view.model or view.id)
    if view.kind == "ble" and view.subject:
        return _("%(person)s's %(device)s") % {"person": people.get(view.subject, view.subject), "device": what}
    return what


def _reading(request: Request, view: DeviceView) -> dict[str, Any] | None:
    if view.last is None:
        return None
    _ = gettext(request)
    metric = view.last.metric
    value = view.last.value
    shown = f"{value:.0f}" if metric in {"heart_rate", "pulse_rate", "systolic", "diastolic", "power"} else f"{value:g}"
    if metric == "systolic" and view.diastolic is not None:
        return {
            "what": _("blood pressure"),
            "value": f"{value:.0f}/{view.diastolic.value:.0f}",
            "unit": "mmHg",
            "at_ms": view.last.ts * 1000,
        }
    return {
        "what": _(METRIC_NAMES[metric]) if metric in METRIC_NAMES else metric,
        "value": shown,
        "unit": METRIC_UNITS.get(metric, ""),
        "at_ms": view.last.ts * 1000,
    }


def _context(request: Request, *, job: Job | None = None, problem: PairingProblem | None = None) -> dict[str, Any]:
    svc = service_of(request)
    people = _people(request)
    names = {p.id: p.label for p in people}
    try:
        views = svc.devices()
        list_problem = None
    except PairingProblem as err:
        views, list_problem = [], err
    rows = [{"view": v, "title": _title(request, v, names), "reading": _reading(request, v)} for v in views]
    job = job if job is not None else svc.running()
    job_problem = None
    if job is not None and job.problem is not None:
        job_problem = _problem(PairingProblem(job.problem.kind, job.problem.detail))
    return {
        "devices": rows,
        "people": people,
        "job": job,
        "job_problem": job_problem,
        "appliances": APPLIANCES,
        "fragment": False,
        "problem": _problem(problem) if problem is not None else _problem(list_problem),
        "problems": PROBLEMS,
        "profile_names": PROFILE_NAMES,
        "new_person": NEW_PERSON,
        "scan_s": svc.scan_s,
    }


def _problem(err: PairingProblem | None) -> dict[str, Any] | None:
    if err is None:
        return None
    title, todo = PROBLEMS[err.kind]
    return {"kind": err.kind.value, "title": title, "todo": todo, "detail": err.detail}


async def devices_page(request: Request) -> Response:
    svc = service_of(request)
    job_id = request.query_params.get("job")
    job = svc.job(job_id) if job_id else None
    return render(request, "devices.html", _context(request, job=job))


async def scan(request: Request) -> Response:
    svc = service_of(request)
    try:
        job = svc.start_scan()
    except PairingProblem as err:
        return _answer(request, problem=err, status=409 if err.kind is ProblemKind.busy else 400)
    if _is_htmx(request):
        return render(request, "devices_job.html", _job_context(request, job))
    return RedirectResponse(f"/devices?job={job.id}", status_code=303)


def _job_context(request: Request, job: Job) -> dict[str, Any]:
    return {**_context(request, job=job), "fragment": True}


async def job_status(request: Request) -> Response:
    svc = service_of(request)
    job = svc.job(request.path_params["job"])
    if job is None:
        if _is_htmx(request):
            return Response(status_code=286)  # htmx: stop polling
        return RedirectResponse("/devices", status_code=303)
    if _is_htmx(request):
        return render(request, "devices_job.html", _job_context(request, job))
    return render(request, "devices.html", _context(request, job=job))


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _person(request: Request, form: FormData) -> str:
    """The chosen person's id; a new person (by name) is added to the household first."""
    chosen = _field(form, "person")
    if chosen == NEW_PERSON or not chosen:
        name = _field(form, "person_name")
        if not name:
            raise PairingProblem(ProblemKind.bad_input, "no person chosen and no name given")
        site = site_of(request)
        try:
            with site.agent_db() as conn:
                return household.add_person(site.web_db, site.config, name, conn).id
        except household.HouseholdError as err:
            raise PairingProblem(ProblemKind.bad_input, str(err)) from err
    return chosen


async def pair_device(request: Request) -> Response:
    svc = service_of(request)
    form = await request.form()
    kind = _field(form, "kind")
    key = _field(form, "key")
    label = _field(form, "label") or None
    try:
        if kind == "plug":
            appliance = _field(form, "appliance")
            if appliance not in {a for a, _ in APPLIANCES}:
                raise PairingProblem(ProblemKind.bad_input, f"unknown appliance {appliance!r}")
            if appliance == "other":
                taken = {v.model for v in svc.devices() if v.kind == "plug"}
                appliance = next(f"other-{i}" for i in range(1, 1000) if f"other-{i}" not in taken)
            await svc.pair_plug(key, appliance, label=label)
            return _answer(request, done=True)
        profile = _field(form, "profile") or None
        if profile is not None and profile not in PROFILE_NAMES:
            profile = None
        job = svc.start_pair(key, _person(request, form), label=label, profile=profile)
    except PairingProblem as err:
        return _answer(request, problem=err, status=400)
    if _is_htmx(request):
        return render(request, "devices_job.html", _job_context(request, job))
    return RedirectResponse(f"/devices?job={job.id}", status_code=303)


async def edit_device(request: Request) -> Response:
    svc = service_of(request)
    form = await request.form()
    device = request.path_params["device"]
    try:
        person = _person(request, form) if _field(form, "person") or _field(form, "person_name") else None
        await svc.update(device, label=_field(form, "label") or None, person=person)
    except PairingProblem as err:
        return _answer(request, problem=err, status=400)
    return _answer(request, done=True)


async def remove_device(request: Request) -> Response:
    svc = service_of(request)
    device = request.path_params["device"]
    try:
        warning = await svc.remove(device)
    except PairingProblem as err:
        return _answer(request, problem=err, status=400)
    if warning:
        log.warning("removing %s: the bond could not be deleted: %s", device, warning)
    return _answer(request, done=True)


def _answer(
    request: Request, *, problem: PairingProblem | None = None, done: bool = False, status: int = 200
) -> Response:
    """After a form: the page again (with the problem worded), or back to the list."""
    if _is_htmx(request):
        # a fragment for the job area (htmx swaps 2xx answers only): the problem in words, or nothing running
        ctx = {**_context(request, problem=problem), "job": None}
        return render(request, "devices_job.html", ctx)
    if problem is None and done:
        return RedirectResponse("/devices", status_code=303)
    return render(request, "devices.html", _context(request, problem=problem), status_code=status)


routes: list[BaseRoute] = [
    Route("/devices", devices_page, methods=["GET"]),
    Route("/devices/scan", scan, methods=["POST"]),
    Route("/devices/jobs/{job}", job_status, methods=["GET"]),
    Route("/devices/pair", pair_device, methods=["POST"]),
    Route("/devices/{device}/edit", edit_device, methods=["POST"]),
    Route("/devices/{device}/remove", remove_device, methods=["POST"]),
]
