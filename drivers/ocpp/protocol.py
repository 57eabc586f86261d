"""Sans-IO OCPP-J 1.6 framing and lenient request parsers, with the CALLERROR code for each malformed input.

OCPP-J 1.6 (section 4): a message is a JSON array. ``[2, uniqueId, action, payload]`` is a CALL,
``[3, uniqueId, payload]`` a CALLRESULT, ``[4, uniqueId, errorCode, errorDescription, errorDetails]`` a CALLERROR.
``uniqueId`` is a string of at most 36 characters; a CALL is answered with a CALLRESULT or a CALLERROR carrying
the same ``uniqueId``. The 1.6 error codes are NotImplemented, NotSupported, InternalError, ProtocolError,
SecurityError, FormationViolation, PropertyConstraintViolation, OccurenceConstraintViolation (sic, the errata
keeps the typo), TypeConstraintViolation and GenericError. A frame that is not even an array gets no uniqueId
back; we answer it with uniqueId ``"-1"`` (the convention OCPP 2.0.1 later wrote down), or with the uniqueId we
can still read from its text, so the charger's log shows the cause and the connection stays up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from drivers.ocpp.normalise import parse_int, parse_timestamp
from kyojo.contract.vocab import ParseError

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_UNIQUE_ID = 36
UNKNOWN_UNIQUE_ID = "-1"

#: ParseError reason prefix -> OCPP 1.6 CALLERROR errorCode
ERROR_CODES = {
    "format": "FormationViolation",
    "type": "TypeConstraintViolation",
    "missing": "OccurenceConstraintViolation",
    "value": "PropertyConstraintViolation",
    "incomplete": "ProtocolError",
    "security": "SecurityError",
}


def error_code(err: ParseError) -> str:
    """The OCPP 1.6 CALLERROR errorCode for a ParseError from this package."""
    return ERROR_CODES.get(err.reason.split(":", 1)[0], "FormationViolation")


@dataclass(frozen=True, slots=True)
class Frame:
    """A well-formed OCPP-J message. ``action``/``payload`` are set for a CALL."""

    type_id: int
    unique_id: str
    action: str | None = None
    payload: Any = None


class FrameError(ParseError):
    """A frame that cannot be handled; answer with CALLERROR ``code`` to ``unique_id`` (None: do not answer)."""

    def __init__(self, code: str, unique_id: str | None, detail: str, raw: str | bytes | None = None) -> None:
        super().__init__(f"frame:{code}", raw=raw, detail=detail)
        self.code = code
        self.unique_id = unique_id


def _guess_unique_id(text: str) -> str:
    m = re.match(r'\s*\[\s*2\s*,\s*"([^"\\]{1,36})"', text)
    return m.group(1) if m else UNKNOWN_UNIQUE_ID


def parse_frame(raw: str | bytes) -> Frame:
    """Classify one websocket message. Raises :class:`FrameError` with the CALLERROR to send back."""
    if isinstance(raw, bytes):
        # OCPP-J uses text frames only; a binary frame is a protocol error, but its text may still be usable.
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("FormationViolation", UNKNOWN_UNIQUE_ID, "binary frame, not UTF-8") from None
    try:
        msg = json.loads(raw)
    except ValueError as err:
        raise FrameError("FormationViolation", _guess_unique_id(raw), f"not JSON: {err}", raw) from None
    if not isinstance(msg, list) or not msg:
        raise FrameError("FormationViolation", UNKNOWN_UNIQUE_ID, "an OCPP-J message is a non-empty JSON array", raw)
    type_id = msg[0]
    uid = msg[1] if len(msg) > 1 else None
    uid_ok = isinstance(uid, str) and 0 < len(uid) <= MAX_UNIQUE_ID
    answer_to = uid if uid_ok else UNKNOWN_UNIQUE_ID
    if type_id in (CALLRESULT, CALLERROR) and not isinstance(type_id, bool):
        if not uid_ok:
            # A response we cannot match to a request: nothing to answer (answering a response is not allowed).
            raise FrameError("FormationViolation", None, "response without a valid uniqueId", raw)
        if type_id == CALLRESULT and len(msg) != 3:
            raise FrameError("ProtocolError", None, "CALLRESULT must have 3 elements", raw)
        if type_id == CALLERROR and len(msg) != 5:
            raise FrameError("ProtocolError", None, "CALLERROR must have 5 elements", raw)
        assert isinstance(uid, str)
        return Frame(type_id, uid, payload=msg[2])
    if type_id != CALL or isinstance(type_id, bool):
        raise FrameError("FormationViolation", answer_to, f"unknown MessageTypeId {type_id!r}", raw)
    if len(msg) != 4:
        raise FrameError("ProtocolError", answer_to, f"a CALL has 4 elements, got {len(msg)}", raw)
    if not uid_ok:
        raise FrameError("FormationViolation", UNKNOWN_UNIQUE_ID, "uniqueId must be a string of 1-36 chars", raw)
    assert isinstance(uid, str)
    action, payload = msg[2], msg[3]
    if not isinstance(action, str) or not action:
        raise FrameError("FormationViolation", uid, "Action must be a non-empty string", raw)
    if not isinstance(payload, dict):
        raise FrameError("FormationViolation", uid, "the payload of a CALL is a JSON object", raw)
    return Frame(CALL, uid, action, payload)


# ---------------------------------------------------------------------------------------------------------------
# Lenient request parsers (wire camelCase in, plain values out). Required fields and types are checked; lengths
# and enum spellings are not, because chargers exceed them in harmless ways.
# ---------------------------------------------------------------------------------------------------------------


def require_str(payload: dict[str, Any], name: str, *, max_len: int | None = None) -> str:
    """A required string field (cut to ``max_len``: the 1.6 CiString limits are exceeded in the field)."""
    if name not in payload:
        raise ParseError(f"missing:{name}", detail=f"{name} is required")
    value = payload[name]
    if not isinstance(value, str):
        raise ParseError(f"type:{name}", detail=f"{name} must be a string")
    return value[:max_len] if max_len else value


def optional_str(payload: dict[str, Any], name: str) -> str | None:
    """An optional string field; a non-string is ignored (quirk), an empty string kept."""
    value = payload.get(name)
    return value if isinstance(value, str) else None


def require_int(payload: dict[str, Any], name: str, quirks: list[str] | None = None) -> int:
    """A required integer field (numeric strings accepted)."""
    if name not in payload:
        raise ParseError(f"missing:{name}", detail=f"{name} is required")
    return parse_int(payload[name], name, quirks=quirks)


def require_meter_wh(payload: dict[str, Any], name: str) -> float:
    """``meterStart``/``meterStop``: an integer in Wh per OCPP 1.6; decimals and numeric strings are accepted."""
    if name not in payload:
        raise ParseError(f"missing:{name}", detail=f"{name} is required")
    value = payload[name]
    if isinstance(value, bool):
        raise ParseError(f"type:{name}", detail=f"{name} must be a number of Wh")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParseError(f"type:{name}", detail=f"{name} must be a number of Wh") from None
    if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise ParseError(f"type:{name}", detail=f"{name} must be a number of Wh")
    if value < 0:
        raise ParseError(f"value:{name}", detail=f"{name} must be >= 0")
    return float(value)


def require_timestamp(payload: dict[str, Any], name: str, received_at: float, quirks: list[str]) -> float:
    """A required timestamp; an unset charger clock is replaced by the reception time."""
    if name not in payload:
        raise ParseError(f"missing:{name}", detail=f"{name} is required")
    return parse_timestamp(payload[name], received_at=received_at, quirks=quirks)


@dataclass(frozen=True, slots=True)
class Status:
    """StatusNotification.req: connector 0 is the charge point as a whole (OCPP 1.6 section 6.47)."""

    connector: int
    status: str
    error_code: str
    info: str | None
    vendor_error_code: str | None
    ts: float


def parse_status(payload: dict[str, Any], received_at: float) -> Status:
    """StatusNotification.req; status/errorCode kept as sent (unknown values are shown, not rejected)."""
    quirks: list[str] = []
    connector = require_int(payload, "connectorId", quirks)
    if connector < 0:
        raise ParseError("value:connectorId", detail="connectorId must be >= 0")
    status = require_str(payload, "status", max_len=32)
    code = require_str(payload, "errorCode", max_len=32)
    ts = (
        parse_timestamp(payload["timestamp"], received_at=received_at, quirks=quirks)
        if payload.get("timestamp") is not None
        else received_at  # timestamp is optional in StatusNotification.req
    )
    return Status(connector, status, code, optional_str(payload, "info"), optional_str(payload, "vendorErrorCode"), ts)
