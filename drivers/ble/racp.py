"""Record Access Control Point (RACP, characteristic 0x2A52): sans-IO requests and responses.

Layout as the Glucose Service (GLS 1.0) defines it; other services with stored records reuse the same
control point (e.g. Continuous Glucose Monitoring, Pulse Oximeter spot-check storage)::

    Op Code (uint8) | Operator (uint8) | Operand (0..n bytes)

The client *writes* a request (with response) and the server *indicates* the answer on the RACP itself,
after having sent the selected records as notifications of the measurement characteristic (Glucose
Measurement 0x2A18 for a glucose meter). Only one procedure runs at a time; a request while one is in
progress is refused with the ATT error :data:`ATT_PROCEDURE_ALREADY_IN_PROGRESS`, a request without
indications enabled on the RACP with :data:`ATT_CCCD_IMPROPERLY_CONFIGURED`.

Filtered operators (``<=``, ``>=``, range) put a Filter Type byte first in the operand: 0x01 = Sequence
Number (uint16, the value the meter numbers its records with), 0x02 = User Facing Time (a Date Time).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kyojo.contract.errors import KyojoError

RACP = 0x2A52


class OpCode(IntEnum):
    """RACP Op Codes (GLS 1.0); 0x00 and 0x07-0xFF are reserved."""

    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class Operator(IntEnum):
    """RACP Operators; responses carry NULL."""

    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL = 0x02
    GREATER_THAN_OR_EQUAL = 0x03
    WITHIN_RANGE = 0x04
    FIRST_RECORD = 0x05
    LAST_RECORD = 0x06


class FilterType(IntEnum):
    """First operand byte of the filtered operators."""

    SEQUENCE_NUMBER = 0x01
    USER_FACING_TIME = 0x02


class ResponseCode(IntEnum):
    """Response Code values (the 4th byte of a 0x06 Response Code indication)."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


#: ATT application error of GLS 1.0: a RACP procedure is already running (later services use the common
#: profile error code 0xFE for the same condition)
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0x80
#: ATT application error of GLS 1.0: RACP written without indications enabled on its CCCD (common code: 0xFD)
ATT_CCCD_IMPROPERLY_CONFIGURED = 0x81

#: the largest Sequence Number (uint16)
MAX_SEQUENCE = 0xFFFF


class RacpError(KyojoError, ValueError):
    """A RACP value that is not a well-formed request or response."""


def report_all() -> bytes:
    """Report stored records, all records: ``01 01``."""
    return bytes([OpCode.REPORT_STORED_RECORDS, Operator.ALL_RECORDS])


def report_from(sequence: int) -> bytes:
    """Report stored records with Sequence Number >= ``sequence``: ``01 03 01 <uint16>``."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {sequence} is not a uint16")
    return bytes(
        [OpCode.REPORT_STORED_RECORDS, Operator.GREATER_THAN_OR_EQUAL, FilterType.SEQUENCE_NUMBER]
    ) + sequence.to_bytes(2, "little")


def count_all() -> bytes:
    """Report number of stored records, all records: ``04 01`` (answered by a 0x05 response)."""
    return bytes([OpCode.REPORT_NUMBER_OF_STORED_RECORDS, Operator.ALL_RECORDS])


def count_from(sequence: int) -> bytes:
    """Report number of stored records with Sequence Number >= ``sequence``."""
    return bytes([OpCode.REPORT_NUMBER_OF_STORED_RECORDS]) + report_from(sequence)[1:]


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed RACP request (what a server, e.g. the virtual meter, receives)."""

    op_code: int
    operator: int
    operand: bytes

    def sequence_filter(self) -> int | None:
        """The Sequence Number of a ``>=``/``<=`` filter; None if the operand is not one (or is malformed)."""
        if len(self.operand) == 3 and self.operand[0] == FilterType.SEQUENCE_NUMBER:
            return int.from_bytes(self.operand[1:3], "little")
        return None


def parse_request(data: bytes) -> Request:
    """Split a request into Op Code, Operator and Operand (server side)."""
    if len(data) < 2:
        raise RacpError(f"RACP request needs Op Code and Operator, got {len(data)} bytes")
    return Request(data[0], data[1], bytes(data[2:]))


def response_code(request_op: int, code: ResponseCode) -> bytes:
    """A Response Code indication: ``06 00 <request op code> <response code>``."""
    return bytes([OpCode.RESPONSE_CODE, Operator.NULL, request_op, code])


def number_of_records(count: int) -> bytes:
    """A Number of Stored Records response: ``05 00 <uint16 count>``."""
    return bytes([OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, Operator.NULL]) + min(count, 0xFFFF).to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed RACP indication: a Response Code (``request_op``, ``code``) or a record count."""

    op_code: OpCode
    request_op: int | None = None
    code: int | None = None
    count: int | None = None

    @property
    def ok(self) -> bool:
        """Success or "no records found" (nothing to report is not a failure)."""
        return self.code in (ResponseCode.SUCCESS, ResponseCode.NO_RECORDS_FOUND)

    @property
    def reserved(self) -> bool:
        """A Response Code value the specification reserves (GLS 1.0, RACP Response Code Values: 0x00 and
        0x0A-0xFF are RFU): kept and reported as such, never a parse error; it is not :attr:`ok`."""
        if self.code is None:
            return False
        return self.code not in ResponseCode._value2member_map_

    def describe(self) -> str:
        """Human text of the response."""
        if self.count is not None:
            return f"{self.count} stored records"
        try:
            name = ResponseCode(self.code or 0).name.lower().replace("_", " ")
        except ValueError:
            name = f"reserved response code 0x{self.code or 0:02X}"
        return f"op 0x{self.request_op or 0:02X}: {name}"


def parse_response(data: bytes) -> Response:
    """Parse an indication of the RACP (client side); raises :class:`RacpError` on anything else.

    A Response Code indication with a reserved Response Code value is parsed (:attr:`Response.reserved`). An
    indication with a reserved Op Code (0x00, 0x07-0xFF) is refused: its layout is not defined, so nothing of
    it can be read (there is no "rest of the message" to keep).
    """
    if len(data) == 4 and data[0] == OpCode.RESPONSE_CODE and data[1] == Operator.NULL:
        return Response(OpCode.RESPONSE_CODE, request_op=data[2], code=data[3])
    if len(data) == 4 and data[0] == OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE and data[1] == Operator.NULL:
        return Response(OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, count=int.from_bytes(data[2:4], "little"))
    raise RacpError(f"not a RACP response ({len(data)} bytes)")
