"""The gateway's local OCPP 1.6J central system: ``ocpp`` library handlers over a ``websockets`` server.

OCPP-J 1.6 transport facts: the charge point opens ``ws://<host>:<port>/<path>/<chargePointId>`` (here
``/ocpp/<id>``) offering the websocket subprotocol ``ocpp1.6``; either side may send CALLs on the same socket.
Security profile 1 (OCPP 1.6 security whitepaper) is HTTP Basic auth on that request with username = the charge
point id and password = its AuthorizationKey. A charge point that reconnects keeps its transactions: the central
system must accept MeterValues/StopTransaction for a transaction it started before the connection (or the
central system itself) went down, and a charge point does not repeat BootNotification after a central system
restart.

Nothing on the LAN is trusted for being there: a charge point id outside the allow-list is refused before the
websocket upgrade with HTTP 404 (OCPP-J 1.6: "If the Central System does not recognize the charge point identifier
in the URL path, it SHOULD send an HTTP response with status 404"), a missing or wrong password with 401, and each
refusal is counted (``health()["rejected"]``) and logged once per cause and minute.

Lenient by design: every handler skips the library's schema validation and parses with the sans-IO functions of
:mod:`drivers.ocpp.protocol` / :mod:`drivers.ocpp.normalise`, so known quirks are normalised instead of rejected,
while malformed frames still get the OCPP 1.6 CALLERROR (and the connection stays up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import unquote

from ocpp import exceptions as oe
from ocpp.messages import Call, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHeader, NegotiationError
from websockets.headers import parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from drivers.counter import MonotonicCounter
from drivers.logs import LogLimiter
from drivers.ocpp.normalise import normalise_meter_values, normalise_meter_values_payload, summarise
from drivers.ocpp.protocol import (
    CALL,
    FrameError,
    error_code,
    optional_str,
    parse_frame,
    parse_status,
    require_int,
    require_meter_wh,
    require_str,
    require_timestamp,
)
from drivers.ocpp.sessions import SessionStore
from kyojo.contract.vocab import MAX_POWER_W, ParseError, Reading

log = logging.getLogger(__name__)

SUBPROTOCOL = Subprotocol("ocpp1.6")
_PATH = re.compile(r"/ocpp/([^/?#]{1,64})/?(?:\?.*)?")  # fullmatch
_DEVICE_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

_ERRORS: Mapping[str, type[oe.OCPPError]] = {
    "FormationViolation": oe.FormationViolationError,
    "TypeConstraintViolation": oe.TypeConstraintViolationError,
    "OccurenceConstraintViolation": oe.OccurenceConstraintViolationError,
    "PropertyConstraintViolation": oe.PropertyConstraintViolationError,
    "ProtocolError": oe.ProtocolError,
    "SecurityError": oe.SecurityError,
}


def iso_now(ts: float) -> str:
    """OCPP dateTime in UTC with a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_F = TypeVar("_F", bound=Callable[..., Any])


def handles(action: Action) -> Callable[[_F], _F]:
    """``@on(action)`` of the ocpp library, typed, without its schema validation: the handlers parse leniently."""
    decorator: Callable[[_F], _F] = on(action, skip_schema_validation=True)
    return decorator


#: What the ocpp library logs (through :class:`_WireLog`): every frame, at DEBUG only, because frames carry RFID
#: idTags and meter values.
wire_log = logging.getLogger("drivers.ocpp.wire")


def _short(value: object, limit: int = 120) -> str:
    """A peer-supplied value for a log line: repr (no raw newlines or escapes), cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _WireLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to the ocpp library. Its INFO lines (every frame received and sent) go to DEBUG; its
    ``exception()`` for a call our handler refused (an OCPPError: the CALLERROR it sends) becomes one line with
    the cause, rate-limited, instead of a traceback that quotes the whole payload. A handler bug (any other
    exception) keeps its traceback, rate-limited too."""

    def __init__(self, handler: ChargePointHandler) -> None:
        super().__init__(wire_log, {})
        self.handler = handler

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        err = sys.exc_info()[1]
        request = args[0] if args else None
        action = str(getattr(request, "action", "?"))
        unique_id = str(getattr(request, "unique_id", "?"))
        if isinstance(err, oe.OCPPError):
            self.handler.log_refused(action, unique_id, err)
            return
        self.handler.central.log_limited(
            logging.ERROR,
            f"bug:{self.handler.id}:{action}",
            "%s: %s (uid %s) failed in the handler: %s",
            _short(self.handler.id),
            _short(action, 40),
            _short(unique_id, 40),
            err.__class__.__name__,
            exc_info=True,
        )


@dataclass(slots=True)
class ChargerState:
    """What the central system knows about one charge point (its health)."""

    id: str
    connected: bool = False
    connected_since: float | None = None
    last_seen: float | None = None
    last_heartbeat: float | None = None
    registration: str | None = None
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    subprotocol: str | None = None
    connectors: dict[int, dict[str, Any]] = field(default_factory=dict)
    transactions: dict[int, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready health."""
        return {
            "connected": self.connected,
            "connected_since": self.connected_since,
            "last_seen": self.last_seen,
            "last_heartbeat": self.last_heartbeat,
            "registration": self.registration,
            "vendor": self.vendor,
            "model": self.model,
            "firmware": self.firmware,
            "subprotocol": self.subprotocol,
            "connectors": {str(k): dict(v) for k, v in sorted(self.connectors.items())},
            "transactions": {str(k): v for k, v in sorted(self.transactions.items())},
            "counts": dict(self.counts),
        }


class ChargePointHandler(_ChargePoint):  # type: ignore[misc]  # the ocpp library ships no type hints
    """One websocket connection of one charge point; the handlers answer what the charge point sends."""

    def __init__(self, cp_id: str, connection: ServerConnection, central: CentralSystem) -> None:
        super().__init__(cp_id, connection, response_timeout=central.response_timeout, logger=_WireLog(self))
        self.central = central
        self.state = central.state(cp_id)
        self.device_prefix = _DEVICE_UNSAFE.sub("_", cp_id)
        self._wire: dict[str, dict[str, Any]] = {}

    # -- framing ----------------------------------------------------------------------------------------------

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Route one frame; malformed ones get the OCPP 1.6 CALLERROR instead of being dropped."""
        self.state.last_seen = self.central.clock()
        try:
            frame = parse_frame(raw_msg)
        except FrameError as err:
            self.state.counts[f"callerror:{err.code}"] += 1
            self.central.log_limited(
                logging.WARNING,
                f"frame:{self.id}:{err.code}",
                "%s: malformed frame refused: %s: %s",
                _short(self.id),
                err.code,
                _short(err.detail),
            )
            if err.unique_id is not None:
                await self._send(json.dumps([4, err.unique_id, err.code, err.detail[:255], {}]))
            return
        if frame.type_id != CALL:
            with contextlib.suppress(oe.OCPPError, TypeError):
                self._response_queue.put_nowait(unpack(raw_msg))
            return
        assert frame.action is not None
        msg = Call(frame.unique_id, frame.action, frame.payload)
        self._wire[frame.unique_id] = frame.payload
        try:
            await self._handle_call(msg)
        except oe.OCPPError as error:  # raised before any handler ran: unknown action, or not one we receive
            self.state.counts[f"callerror:{error.code}"] += 1
            self.log_refused(frame.action, frame.unique_id, error)
            await self._send(msg.create_call_error(error).to_json())
        finally:
            self._wire.pop(frame.unique_id, None)

    def log_refused(self, action: str, unique_id: str, error: oe.OCPPError) -> None:
        """One line per refused call with the CALLERROR's code and cause, rate-limited per charger, action, code."""
        cause = error.details.get("cause") if isinstance(error.details, dict) else None
        self.central.log_limited(
            logging.WARNING,
            f"call:{self.id}:{action}:{error.code}",
            "%s: refused %s (uid %s): %s: %s%s",
            _short(self.id),
            _short(action, 40),
            _short(unique_id, 40),
            error.code,
            _short(error.description),
            f" [{_short(cause, 60)}]" if cause else "",
        )

    @contextlib.contextmanager
    def _as_callerror(self) -> Iterator[None]:
        """ParseError from a lenient parser -> the OCPP error that the library sends back as the CALLERROR."""
        try:
            yield
        except ParseError as err:
            code = error_code(err)
            self.state.counts[f"callerror:{code}"] += 1
            cls = _ERRORS.get(code, oe.FormationViolationError)
            raise cls(description=err.detail or err.reason, details={"cause": err.reason}) from err

    def _payload(self, unique_id: str) -> dict[str, Any]:
        return self._wire.get(unique_id, {})

    def _note(self, quirks: tuple[str, ...] | list[str], skipped: tuple[str, ...] = ()) -> None:
        for q in quirks:
            self.state.counts[f"quirk:{q}"] += 1
        for s in skipped:
            self.state.counts[f"skipped:{s}"] += 1

    # -- Core profile, charge point -> central system ---------------------------------------------------------

    @handles(Action.boot_notification)
    async def on_boot_notification(self, call_unique_id: str, **_: Any) -> call_result.BootNotification:
        """Accepted, with the heartbeat interval (a charge point outside the allow-list never gets this far)."""
        p = self._payload(call_unique_id)
        with self._as_callerror():
            self.state.vendor = require_str(p, "chargePointVendor", max_len=64)
            self.state.model = require_str(p, "chargePointModel", max_len=64)
        self.state.firmware = optional_str(p, "firmwareVersion")
        self.state.registration = "Accepted"
        return call_result.BootNotification(
            current_time=iso_now(self.central.clock()),
            interval=self.central.heartbeat_s,  # OCPP 1.6: with Accepted, the heartbeat interval
            status=RegistrationStatus.accepted,
        )

    @handles(Action.heartbeat)
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        """Heartbeat.conf carries the central system's time (chargers set their clock from it)."""
        now = self.central.clock()
        self.state.last_heartbeat = now
        return call_result.Heartbeat(current_time=iso_now(now))

    @handles(Action.status_notification)
    async def on_status_notification(self, call_unique_id: str, **_: Any) -> call_result.StatusNotification:
        """Connector status and error code (connector 0 = the whole charge point)."""
        with self._as_callerror():
            st = parse_status(self._payload(call_unique_id), self.central.clock())
        self.state.connectors[st.connector] = {
            "status": st.status,
            "error_code": st.error_code,
            "info": st.info,
            "vendor_error_code": st.vendor_error_code,
            "ts": st.ts,
        }
        if st.error_code != "NoError":
            self.state.counts[f"error_code:{st.error_code}"] += 1
        return call_result.StatusNotification()

    @handles(Action.authorize)
    async def on_authorize(self, call_unique_id: str, **_: Any) -> call_result.Authorize:
        """Accepted for a household tag (or any tag when no list is configured), Invalid otherwise."""
        with self._as_callerror():
            tag = require_str(self._payload(call_unique_id), "idTag")
        return call_result.Authorize(id_tag_info=IdTagInfo(status=self.central.authorize(tag)))

    @handles(Action.start_transaction)
    async def on_start_transaction(self, call_unique_id: str, **_: Any) -> call_result.StartTransaction:
        """Record the transaction; its id is the sessions table's row id (it survives restarts).

        OCPP 1.6: the central system always returns a transactionId, even for a tag it does not accept; the
        charge point then stops the transaction itself.
        """
        p = self._payload(call_unique_id)
        quirks: list[str] = []
        with self._as_callerror():
            connector = require_int(p, "connectorId", quirks)
            if connector < 1:
                raise ParseError("value:connectorId", detail="a transaction runs on a connector > 0")
            tag = require_str(p, "idTag")
            meter_start = require_meter_wh(p, "meterStart")
            ts = require_timestamp(p, "timestamp", self.central.clock(), quirks)
        self._note(quirks)
        status = self.central.authorize(tag)
        tx = self.central.store.start(self.id, connector, tag, meter_start, ts, tag_status=status.value)
        self.state.transactions[connector] = tx
        return call_result.StartTransaction(transaction_id=tx, id_tag_info=IdTagInfo(status=status))

    @handles(Action.stop_transaction)
    async def on_stop_transaction(self, call_unique_id: str, **_: Any) -> call_result.StopTransaction:
        """Close the session; ``transactionData`` (meter values of the transaction) becomes Readings too."""
        p = self._payload(call_unique_id)
        quirks: list[str] = []
        now = self.central.clock()
        with self._as_callerror():
            tx = require_int(p, "transactionId", quirks)
            meter_stop = require_meter_wh(p, "meterStop")
            ts = require_timestamp(p, "timestamp", now, quirks)
            session = self.central.store.get(tx)
            connector = session.connector if session else 0
            batch = None
            if p.get("transactionData") is not None:
                batch = normalise_meter_values(
                    p["transactionData"],
                    device=f"{self.device_prefix}-{connector}",
                    subject=self.central.subject,
                    connector=connector,
                    transaction_id=tx,
                    received_at=now,
                )
        self._note(quirks)
        if batch is not None:
            self._note(batch.quirks, batch.skipped)
            register, register_ts, max_power = summarise(batch.readings)
            self.central.store.meter(tx, register, max_power, register_ts)
            self.central.emit(batch.readings)
        reason = optional_str(p, "reason")
        if self.central.store.stop(tx, meter_stop, ts, reason) is None:
            self.state.counts["unknown_transaction"] += 1
        for c, t in list(self.state.transactions.items()):
            if t == tx:
                del self.state.transactions[c]
        tag = optional_str(p, "idTag")
        info = IdTagInfo(status=self.central.authorize(tag)) if tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @handles(Action.meter_values)
    async def on_meter_values(self, call_unique_id: str, **_: Any) -> call_result.MeterValues:
        """Every measurand is accepted; the mapped ones become Readings (see :mod:`drivers.ocpp.normalise`)."""
        with self._as_callerror():
            connector, tx, batch = normalise_meter_values_payload(
                self._payload(call_unique_id),
                device_prefix=self.device_prefix,
                subject=self.central.subject,
                received_at=self.central.clock(),
            )
        self._note(batch.quirks, batch.skipped)
        if tx is not None:
            register, register_ts, max_power = summarise(batch.readings)
            if not self.central.store.meter(tx, register, max_power, register_ts):
                self.state.counts["unknown_transaction"] += 1
            elif connector not in self.state.transactions:
                session = self.central.store.get(tx)
                if session is not None and session.stop_ts is None:
                    self.state.transactions[connector] = tx  # learnt after a restart of the central system
        self.central.emit(batch.readings)
        return call_result.MeterValues()

    @handles(Action.data_transfer)
    async def on_data_transfer(self, call_unique_id: str, **_: Any) -> call_result.DataTransfer:
        """No vendor extension is implemented: OCPP 1.6 says answer UnknownVendorId (the connection stays)."""
        with self._as_callerror():
            vendor = require_str(self._payload(call_unique_id), "vendorId")
        self.state.counts[f"data_transfer:{vendor[:32]}"] += 1
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @handles(Action.diagnostics_status_notification)
    async def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        """Acknowledged (chargers send it unprompted after boot)."""
        return call_result.DiagnosticsStatusNotification()

    @handles(Action.firmware_status_notification)
    async def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        """Acknowledged (chargers send it unprompted after boot)."""
        return call_result.FirmwareStatusNotification()


Clock = Callable[[], float]


def is_any_address(host: str) -> bool:
    """True for a wildcard address (``0.0.0.0``, ``::``, or ``""`` for asyncio): listening on every interface."""
    if not host.strip("[]"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


class CentralSystem:
    """The central system: websocket server, per-charger state, the sessions store and a Readings queue.

    ``allow``: the charge point ids that may connect (any other is refused at the handshake with HTTP 404; empty:
    none). ``security_profile``: 1 (default) requires HTTP Basic auth with ``credentials[id]`` as the password
    (401 otherwise); 0 connects an allowed id without a password. ``tags``: household RFID tags (None: any tag).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        subject: str,
        allow: Collection[str],
        credentials: Mapping[str, str] | None = None,
        security_profile: int = 1,
        tags: frozenset[str] | None = None,
        heartbeat_s: int = 300,
        clock: Clock = time.time,
        queue_size: int = 10_000,
        response_timeout: float = 30.0,
        log_interval: float = 60.0,
        max_power_w: float = MAX_POWER_W["ev_charger"],
    ) -> None:
        if security_profile not in (0, 1):
            raise ValueError(f"security profile {security_profile} is not supported here (0 or 1)")
        keys = dict(credentials or {})
        missing = sorted(set(allow) - set(keys))
        if security_profile >= 1 and missing:
            raise ValueError(f"security profile 1 needs a key for every allowed charge point: {', '.join(missing)}")
        self.store = store
        self.max_power_w = max_power_w
        self.subject = subject
        self.allow = frozenset(allow)
        self.security_profile = security_profile
        # compared as bytes: hmac.compare_digest refuses str with non-ASCII characters (a peer could send them)
        self._keys = {cp: key.encode("utf-8") for cp, key in keys.items() if cp in self.allow}
        self.tags = tags
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.response_timeout = response_timeout
        self.readings: asyncio.Queue[Reading] = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.rejected: Counter[str] = Counter()
        self.chargers: dict[str, ChargerState] = {}
        self.connections: dict[str, ChargePointHandler] = {}
        self._counters: dict[str, MonotonicCounter] = {}
        self._server: Server | None = None
        self.log_limited = LogLimiter(log, interval=log_interval)

    # -- policy -----------------------------------------------------------------------------------------------

    def authorize(self, tag: str | None) -> AuthorizationStatus:
        """Local authorisation: the household's tags (OCPP 1.6 idTag, case-sensitive CiString20)."""
        if self.tags is None or (tag is not None and tag in self.tags):
            return AuthorizationStatus.accepted
        return AuthorizationStatus.invalid

    def state(self, cp_id: str) -> ChargerState:
        """The state of a charge point (created on first contact)."""
        return self.chargers.setdefault(cp_id, ChargerState(cp_id))

    def emit(self, readings: tuple[Reading, ...]) -> None:
        """Queue Readings; ev_energy made monotonic per device (registers that restart per session), bounded by
        ``max_power_w``; a held register value (replayed, impossible: :mod:`drivers.counter`) is not queued."""
        for r in readings:
            if r.metric == "ev_energy":
                counter = self._counters.get(r.device)
                if counter is None:
                    # slack 100 Wh: some chargers report the register in kWh with one decimal
                    counter = MonotonicCounter(tolerance=0.5, max_rate=self.max_power_w / 3600.0, slack=100.0)
                    self._counters[r.device] = counter
                    saved = self.store.counter(r.device)
                    if saved:
                        counter.restore(saved)
                try:
                    value = counter.update(r.value, r.ts)
                except ParseError as err:  # normalise refuses negative registers already; counted all the same
                    self.rejected[err.reason] += 1
                    continue
                if counter.held:
                    continue
                self.store.save_counter(r.device, counter.to_dict())
                extra = {**r.extra, "register": f"{r.value:g}"}
                r = Reading(r.device, r.subject, r.metric, value, r.unit, r.ts, extra)
            if self.readings.full():
                self.readings.get_nowait()
                self.dropped += 1
            self.readings.put_nowait(r)

    # -- websocket server -------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Admission before the websocket upgrade: path, allow-list (404), then HTTP Basic auth (401)."""
        m = _PATH.fullmatch(request.path)
        if m is None:
            return self._refuse(connection, "path", HTTPStatus.NOT_FOUND, request.path[:80])
        cp_id = unquote(m.group(1))
        if cp_id not in self.allow:
            # the same answer as a wrong path: an unknown id learns nothing about which ids exist
            return self._refuse(connection, "unknown_charge_point", HTTPStatus.NOT_FOUND, cp_id)
        if self.security_profile >= 1 and not self._authenticated(cp_id, request):
            response = self._refuse(connection, "auth", HTTPStatus.UNAUTHORIZED, cp_id)
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        return None

    def _authenticated(self, cp_id: str, request: Request) -> bool:
        """Security profile 1: HTTP Basic with username = charge point id, password = its AuthorizationKey."""
        try:
            user, password = parse_authorization_basic(request.headers["Authorization"])
        except (KeyError, InvalidHeader):  # missing, repeated (MultipleValuesError is a KeyError) or malformed
            return False
        expected = self._keys.get(cp_id)
        if expected is None:  # pragma: no cover - every allowed id has a key under profile 1
            return False
        password_ok = hmac.compare_digest(expected, password.encode("utf-8", "surrogateescape"))
        return password_ok and user == cp_id

    def _refuse(self, connection: ServerConnection, cause: str, status: HTTPStatus, who: str) -> Response:
        self.rejected[cause] += 1
        self.log_limited(
            logging.WARNING,
            f"refused:{cause}",
            "refused a charge point before the websocket upgrade: %s (%d %s) for %s",
            cause,
            status.value,
            status.phrase,
            _short(who, 80),
        )
        return connection.respond(status, f"{status.phrase}\n")

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """``ocpp1.6`` when offered; no subprotocol at all is tolerated (older firmwares omit the header), but a
        charger that offers only other protocols (``ocpp2.0.1``) is refused: it would speak another language."""
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        if not offered:
            return None
        raise NegotiationError(f"unsupported subprotocols {', '.join(offered)}; this central system speaks ocpp1.6")

    async def _handler(self, ws: ServerConnection) -> None:
        m = _PATH.fullmatch(ws.request.path if ws.request else "")
        if m is None:  # pragma: no cover - refused in _process_request
            return
        cp_id = unquote(m.group(1))
        state = self.state(cp_id)
        previous = self.connections.get(cp_id)
        if previous is not None:
            # A charge point reconnects while its old socket still looks open (half-open TCP): the new one wins.
            state.counts["replaced_connection"] += 1
            await previous._connection.close(1001, "replaced by a new connection")
        handler = ChargePointHandler(cp_id, ws, self)
        self.connections[cp_id] = handler
        now = self.clock()
        state.connected, state.connected_since, state.last_seen = True, now, now
        state.subprotocol = ws.subprotocol
        if ws.subprotocol is None:
            state.counts["quirk:no_subprotocol"] += 1
        for tx in self.store.sessions(cp_id, open_only=True):
            state.transactions.setdefault(tx.connector, tx.id)
        try:
            await handler.start()
        except ConnectionClosed:
            pass
        finally:
            if self.connections.get(cp_id) is handler:
                del self.connections[cp_id]
                state.connected = False

    async def start(self, host: str = "127.0.0.1", port: int = 9000) -> int:
        """Listen on ``host`` only; returns the bound port (pass 0 for a free one). Says so when the setup is open."""
        if is_any_address(host):
            log.warning("OCPP central system listens on every interface (%r), not only the charger LAN", host)
        if self.security_profile == 0:
            log.warning(
                "OCPP security profile 0: chargers connect without a password; anyone on the LAN who knows an "
                "allowed charge point id (%d allowed) can send its data",
                len(self.allow),
            )
        if not self.allow:
            log.warning("OCPP allow-list is empty: every charge point will be refused (404)")
        self._server = await serve(
            self._handler,
            host,
            port,
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ping_interval=60,
            ping_timeout=60,
        )
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> CentralSystem:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def health(self) -> dict[str, Any]:
        """Per-charger health plus the server's own counters."""
        return {
            "listening": self._server is not None,
            "security_profile": self.security_profile,
            "allowed": sorted(self.allow),
            "chargers": {k: v.as_dict() for k, v in sorted(self.chargers.items())},
            "rejected": dict(self.rejected),
            "counters": {k: dict(c.causes) for k, c in sorted(self._counters.items()) if c.causes},
            "queue": self.readings.qsize(),
            "dropped": self.dropped,
        }

    # -- commands toward a charge point (the library validates request and answer against the 1.6 schemas) --

    async def call(self, cp_id: str, request: Any) -> Any:
        """Send a CALL to a connected charge point and return its CALLRESULT (raises on CALLERROR/timeout)."""
        handler = self.connections.get(cp_id)
        if handler is None:
            raise LookupError(f"charge point {cp_id!r} is not connected")
        return await handler.call(request, suppress=False)

    async def remote_start(self, cp_id: str, id_tag: str, connector_id: int | None = None) -> str:
        """RemoteStartTransaction; the charge point then sends StartTransaction itself. Returns its status."""
        res = await self.call(cp_id, call.RemoteStartTransaction(id_tag=id_tag, connector_id=connector_id))
        return str(res.status)

    async def remote_stop(self, cp_id: str, transaction_id: int) -> str:
        """RemoteStopTransaction; the charge point then sends StopTransaction. Returns its status."""
        res = await self.call(cp_id, call.RemoteStopTransaction(transaction_id=transaction_id))
        return str(res.status)

    async def change_configuration(self, cp_id: str, key: str, value: str) -> str:
        """ChangeConfiguration (e.g. MeterValueSampleInterval); Accepted, Rejected, RebootRequired, NotSupported."""
        res = await self.call(cp_id, call.ChangeConfiguration(key=key, value=value))
        return str(res.status)

    async def set_charging_profile(self, cp_id: str, connector_id: int, profile: dict[str, Any]) -> str:
        """SetChargingProfile (see :func:`drivers.ocpp.smart.tx_profile`); Accepted, Rejected or NotSupported."""
        res = await self.call(cp_id, call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile))
        return str(res.status)
