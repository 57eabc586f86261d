"""Sans-IO ECHONET Lite frame codec, and the low-voltage smart electric energy meter class (0x0288).

Frame (ECHONET Lite specification, Part 2, format 1)::

    EHD1 EHD2 | TID (2) | SEOJ (3) | DEOJ (3) | ESV | OPC | { EPC PDC EDT[PDC] } * OPC
    0x10 0x81

For the SetGet services (ESV 0x6E / 0x7E / 0x5E) the set list (OPCSet + properties) is followed by the get list
(OPCGet + properties). Multi-byte integers are big-endian. Nothing here does I/O; errors are
:class:`kyojo.contract.errors.ParseError` with a stable reason.

Smart meter properties (Appendix "Detailed Requirements for ECHONET Device objects", class 0x0288, as used on
the Japanese B-route):

===== ===================================================== ==============================================
EPC   property                                              EDT
===== ===================================================== ==============================================
0xD3  coefficient                                           unsigned long (4), 1..999999; absent means 1
0xD7  number of effective digits of cumulative energy       unsigned char (1), 1..8: counter wraps at 10**n
0xE0  cumulative energy, normal direction (bought)           unsigned long (4), 0..99999999, x D3 x E1 kWh
0xE1  unit of cumulative energy                             unsigned char (1): see :data:`UNIT_KWH`
0xE3  cumulative energy, reverse direction (sold)           as 0xE0
0xE7  instantaneous electric power                          signed long (4), W
0xE8  instantaneous currents                                signed short R phase + signed short T phase, 0.1 A
0xEA  cumulative energy at fixed time, normal direction     YYYY(2) MM DD hh mm ss + unsigned long (4)
0xEB  cumulative energy at fixed time, reverse direction    as 0xEA
===== ===================================================== ==============================================

Out-of-range sentinels (ECHONET Lite, "overflow / underflow / no data" codes): signed long 0x7FFFFFFF /
0x80000000 / 0x7FFFFFFE, signed short 0x7FFF / 0x8000 / 0x7FFE, unsigned long 0xFFFFFFFF / 0xFFFFFFFE (none).
A single-phase two-wire meter reports T phase 0x7FFE (no data).
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from kyojo.contract.vocab import ParseError

__all__ = [
    "CONTROLLER",
    "EHD",
    "EOJ",
    "ESV",
    "NODE_PROFILE",
    "SMART_METER",
    "UNIT_KWH",
    "Currents",
    "FixedTimeEnergy",
    "Frame",
    "Property",
    "ReservedValue",
    "decode_frame",
    "encode_frame",
    "get_request",
    "is_reserved_esv",
    "parse_coefficient",
    "parse_cumulative",
    "parse_currents",
    "parse_digits",
    "parse_fixed_time",
    "parse_instant_power",
    "parse_unit",
]

#: EHD1 = 0x10 (ECHONET Lite), EHD2 = 0x81 (format 1: specified message format).
EHD = b"\x10\x81"
_HEADER = 12  # EHD(2) TID(2) SEOJ(3) DEOJ(3) ESV(1) OPC(1)


class ESV(IntEnum):
    """ECHONET Lite service codes."""

    SETI_SNA = 0x50
    SETC_SNA = 0x51
    GET_SNA = 0x52  # Get not possible (some or all requested properties unavailable)
    INF_SNA = 0x53
    SETGET_SNA = 0x5E
    SETI = 0x60
    SETC = 0x61
    GET = 0x62
    INF_REQ = 0x63
    SETGET = 0x6E
    SET_RES = 0x71
    GET_RES = 0x72
    INF = 0x73  # notification (the meter pushes 0xEA every 30 min; the node profile pushes 0xD5 after join)
    INFC = 0x74
    INFC_RES = 0x7A
    SETGET_RES = 0x7E


_SETGET = frozenset({ESV.SETGET, ESV.SETGET_RES, ESV.SETGET_SNA})


def is_reserved_esv(code: int) -> bool:
    """True for a service code the specification reserves for future use.

    ECHONET Lite Specification Part II, section 3.2.5 (ESV): the request codes are 0x60-0x6F, the response and
    notification codes 0x70-0x7F and the "not possible" responses 0x50-0x5F; within these three ranges the
    codes not assigned (e.g. 0x64-0x6D, 0x75-0x79, 0x7B-0x7D, 0x54-0x5D) are reserved for future use. Such a
    frame keeps the common format-1 layout (OPC + properties) and is decoded, with its raw ESV, rather than
    refused; codes outside 0x50-0x7F are not ESVs at all and are refused (``bad_esv``).
    """
    return 0x50 <= code <= 0x7F and code not in ESV._value2member_map_


class ReservedValue(ParseError):
    """A property value of the right size that the specification reserves (an unassigned code).

    It is a :class:`~kyojo.contract.errors.ParseError` (reason ``reserved_value``) so that a caller decoding one
    property on its own learns the value has no meaning to us; :class:`drivers.meter.smartmeter.MeterDecoder`
    catches it per property, reports and counts it, and keeps the rest of the frame.
    """

    def __init__(self, epc: int, edt: bytes, detail: str) -> None:
        super().__init__("reserved_value", raw=edt, detail=detail)
        self.epc = epc


@dataclass(frozen=True, slots=True)
class EOJ:
    """ECHONET object: class group code, class code, instance code."""

    group: int
    cls: int
    instance: int

    def to_bytes(self) -> bytes:
        return bytes((self.group, self.cls, self.instance))

    @classmethod
    def from_bytes(cls, b: bytes) -> EOJ:
        return cls(b[0], b[1], b[2])

    @property
    def class_code(self) -> int:
        """Class group + class (0x0288 for the smart meter)."""
        return self.group << 8 | self.cls

    def __str__(self) -> str:
        return f"{self.group:02X}{self.cls:02X}{self.instance:02X}"


#: Low-voltage smart electric energy meter, instance 1.
SMART_METER = EOJ(0x02, 0x88, 0x01)
#: Controller (HEMS side), instance 1: what the gateway speaks as.
CONTROLLER = EOJ(0x05, 0xFF, 0x01)
#: Node profile object (general): sends the instance list notification 0xD5 after the PANA session opens.
NODE_PROFILE = EOJ(0x0E, 0xF0, 0x01)


@dataclass(frozen=True, slots=True)
class Property:
    """One EPC with its EDT (empty EDT = PDC 0: a Get request, or 'unavailable' in a Get_SNA)."""

    epc: int
    edt: bytes = b""


@dataclass(frozen=True, slots=True)
class Frame:
    """One ECHONET Lite format-1 frame. ``props`` is the (set) list; ``get_props`` only for SetGet services."""

    tid: int
    seoj: EOJ
    deoj: EOJ
    esv: int
    props: tuple[Property, ...] = ()
    get_props: tuple[Property, ...] = field(default=())

    def prop(self, epc: int) -> bytes | None:
        """EDT of the first property ``epc`` that carries data (None if absent or empty)."""
        for p in (*self.props, *self.get_props):
            if p.epc == epc and p.edt:
                return p.edt
        return None


def _encode_props(props: tuple[Property, ...]) -> bytes:
    if len(props) > 255:
        raise ValueError("at most 255 properties per list (OPC is one byte)")
    out = bytearray((len(props),))
    for p in props:
        if not 0 <= p.epc <= 0xFF or len(p.edt) > 255:
            raise ValueError(f"bad property EPC {p.epc:#x} / PDC {len(p.edt)}")
        out += bytes((p.epc, len(p.edt))) + p.edt
    return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    """Serialise a frame (raises ValueError on values that do not fit their fields)."""
    if not 0 <= frame.tid <= 0xFFFF or not 0 <= frame.esv <= 0xFF:
        raise ValueError("TID must fit 2 bytes and ESV 1 byte")
    body = EHD + frame.tid.to_bytes(2, "big") + frame.seoj.to_bytes() + frame.deoj.to_bytes()
    body += bytes((frame.esv,)) + _encode_props(frame.props)
    if frame.esv in _SETGET:
        body += _encode_props(frame.get_props)
    return body


def _decode_props(data: bytes, pos: int, raw: bytes) -> tuple[tuple[Property, ...], int]:
    if pos >= len(data):
        raise ParseError("truncated", raw=raw, detail="missing OPC")
    opc = data[pos]
    pos += 1
    props = []
    for _ in range(opc):
        if pos + 2 > len(data):
            raise ParseError("truncated", raw=raw, detail="missing EPC/PDC")
        epc, pdc = data[pos], data[pos + 1]
        pos += 2
        if pos + pdc > len(data):
            raise ParseError("truncated", raw=raw, detail=f"EPC {epc:#04x}: PDC {pdc} beyond frame end")
        props.append(Property(epc, bytes(data[pos : pos + pdc])))
        pos += pdc
    return tuple(props), pos


def decode_frame(data: bytes) -> Frame:
    """Parse one format-1 frame. Reasons: ``not_echonet`` (wrong EHD), ``truncated``, ``trailing_bytes``,
    ``bad_esv`` (a service code outside the ESV ranges). A reserved service code (:func:`is_reserved_esv`)
    is not an error: the frame is decoded with the common layout and ``esv`` holds the raw code."""
    raw = bytes(data)
    if raw[:2] != EHD:
        raise ParseError("not_echonet", raw=raw, detail=f"EHD {raw[:2].hex()}")
    if len(raw) < _HEADER:
        raise ParseError("truncated", raw=raw, detail=f"{len(raw)} bytes, header needs {_HEADER}")
    esv = raw[10]
    if esv not in ESV._value2member_map_ and not is_reserved_esv(esv):
        raise ParseError("bad_esv", raw=raw, detail=f"ESV {esv:#04x}")
    props, pos = _decode_props(raw, 11, raw)
    get_props: tuple[Property, ...] = ()
    if esv in _SETGET:
        get_props, pos = _decode_props(raw, pos, raw)
    if pos != len(raw):
        raise ParseError("trailing_bytes", raw=raw, detail=f"{len(raw) - pos} bytes after the last property")
    return Frame(
        int.from_bytes(raw[2:4], "big"), EOJ.from_bytes(raw[4:7]), EOJ.from_bytes(raw[7:10]), esv, props, get_props
    )


def get_request(tid: int, epcs: tuple[int, ...], *, deoj: EOJ = SMART_METER, seoj: EOJ = CONTROLLER) -> bytes:
    """A Get (0x62) frame asking ``deoj`` for ``epcs`` (each with PDC 0)."""
    return encode_frame(Frame(tid, seoj, deoj, ESV.GET, tuple(Property(e) for e in epcs)))


# ----------------------------------------------------------------------------------------------------------
# smart meter (0x0288) property values
# ----------------------------------------------------------------------------------------------------------

#: 0xE1 unit for cumulative amounts of electric energy: code -> kWh per count.
UNIT_KWH: dict[int, float] = {
    0x00: 1.0,
    0x01: 0.1,
    0x02: 0.01,
    0x03: 0.001,
    0x04: 0.0001,
    0x0A: 10.0,
    0x0B: 100.0,
    0x0C: 1000.0,
    0x0D: 10000.0,
}

_S32_OVERFLOW, _S32_UNDERFLOW, _S32_NO_DATA = 0x7FFFFFFF, -0x80000000, 0x7FFFFFFE
_S16_OVERFLOW, _S16_UNDERFLOW, _S16_NO_DATA = 0x7FFF, -0x8000, 0x7FFE
_U32_OVERFLOW, _U32_NO_DATA = 0xFFFFFFFF, 0xFFFFFFFE
#: 0xE0/0xE3/0xEA/0xEB value range: 0..99,999,999 (8 decimal digits at most).
_CUMULATIVE_MAX = 99_999_999


def _size(edt: bytes, n: int, epc: int) -> None:
    if len(edt) != n:
        raise ParseError("bad_edt", raw=edt, detail=f"EPC {epc:#04x}: PDC {len(edt)}, expected {n}")


def parse_instant_power(edt: bytes) -> int | None:
    """0xE7: instantaneous power in W (signed long); None for the overflow/underflow/no-data codes."""
    _size(edt, 4, 0xE7)
    (value,) = struct.unpack(">i", edt)
    return None if value in (_S32_OVERFLOW, _S32_UNDERFLOW, _S32_NO_DATA) else value


@dataclass(frozen=True, slots=True)
class Currents:
    """0xE8: R and T phase currents in A (None when the meter has no data, e.g. T on single-phase 2-wire)."""

    r: float | None
    t: float | None


def parse_currents(edt: bytes) -> Currents:
    """0xE8: two signed shorts, R phase then T phase, unit 0.1 A."""
    _size(edt, 4, 0xE8)
    r, t = struct.unpack(">hh", edt)

    def amps(v: int) -> float | None:
        return None if v in (_S16_OVERFLOW, _S16_UNDERFLOW, _S16_NO_DATA) else round(v * 0.1, 1)

    return Currents(amps(r), amps(t))


def parse_cumulative(edt: bytes, epc: int = 0xE0) -> int | None:
    """0xE0 / 0xE3: raw cumulative count (multiply by 0xD3 and 0xE1); None for the no-data codes."""
    _size(edt, 4, epc)
    value = int.from_bytes(edt, "big")
    if value in (_U32_OVERFLOW, _U32_NO_DATA):
        return None
    if value > _CUMULATIVE_MAX:
        raise ParseError("bad_edt", raw=edt, detail=f"EPC {epc:#04x}: {value} above 99999999")
    return value


def parse_coefficient(edt: bytes) -> int:
    """0xD3: coefficient, 1..999999."""
    _size(edt, 4, 0xD3)
    value = int.from_bytes(edt, "big")
    if not 1 <= value <= 999_999:
        raise ParseError("bad_edt", raw=edt, detail=f"EPC 0xd3: coefficient {value} outside 1..999999")
    return value


def parse_unit(edt: bytes) -> float:
    """0xE1: kWh per count of the cumulative registers.

    Appendix "Detailed Requirements for ECHONET Device objects", class 0x0288, EPC 0xE1 assigns the codes
    0x00-0x04 (1 .. 0.0001 kWh) and 0x0A-0x0D (10 .. 10000 kWh); the other codes are unassigned, reserved for
    future use: :class:`ReservedValue` (not ``bad_edt``), so that the rest of the frame is kept.
    """
    _size(edt, 1, 0xE1)
    unit = UNIT_KWH.get(edt[0])
    if unit is None:
        raise ReservedValue(0xE1, edt, f"EPC 0xe1: reserved unit code {edt[0]:#04x}")
    return unit


def parse_digits(edt: bytes) -> int:
    """0xD7: number of effective digits of the cumulative registers (1..8): they wrap at 10**digits."""
    _size(edt, 1, 0xD7)
    if not 1 <= edt[0] <= 8:
        raise ParseError("bad_edt", raw=edt, detail=f"EPC 0xd7: {edt[0]} digits outside 1..8")
    return edt[0]


@dataclass(frozen=True, slots=True)
class FixedTimeEnergy:
    """0xEA / 0xEB: the cumulative count at the last fixed time (every :00 and :30, meter local time)."""

    at: dt.datetime  # naive: the meter's local time (JST on Japanese meters)
    count: int | None  # raw count (x coefficient x unit); None = no data


def parse_fixed_time(edt: bytes, epc: int = 0xEA) -> FixedTimeEnergy:
    """0xEA / 0xEB: year (2), month, day, hour, minute, second, then an unsigned long count."""
    _size(edt, 11, epc)
    year, month, day, hour, minute, second = struct.unpack(">HBBBBB", edt[:7])
    try:
        at = dt.datetime(year, month, day, hour, minute, second)
    except ValueError as err:
        raise ParseError("bad_edt", raw=edt, detail=f"EPC {epc:#04x}: {err}") from None
    return FixedTimeEnergy(at, parse_cumulative(edt[7:], epc))
