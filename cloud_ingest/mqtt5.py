"""A small sans-IO MQTT v5 codec: exactly the client side the ingester's data connection needs.

No I/O here: :func:`encode_connect` & co. return bytes, :class:`Parser` turns received bytes into packets.
The transport is :mod:`cloud_ingest.leanclient`. Facts from the MQTT v5.0 standard (OASIS, 2019) relied on:

- Fixed header (§2.1): byte 1 = packet type (high nibble) | flags (low nibble); then the Remaining Length as a
  Variable Byte Integer (§1.5.5): 7 bits per byte, least significant group first, high bit = "more", at most
  4 bytes, so at most 268,435,455. Flags are reserved (must be exactly as listed in §2.1.3) for every type but
  PUBLISH, whose flags are DUP (0x08), QoS (0x06, value 3 is malformed) and RETAIN (0x01).
- UTF-8 strings and binary data (§1.5.4, §1.5.6) are a 2-byte big-endian length then the bytes.
- Properties (§2.2.2): a Variable Byte Integer length, then (identifier, value) pairs; the identifier is a
  Variable Byte Integer (all defined ones fit in one byte) and fixes the value's type.
- CONNECT (§3.1): protocol name "MQTT", version 5, connect flags (0x80 user name, 0x40 password, 0x02 clean
  start), Keep Alive (2 bytes), properties, then the payload: client id, [user name], [password].
- PUBLISH (§3.3): topic name (a UTF-8 string, no wildcards), a packet identifier (non-zero) only when QoS > 0,
  properties, then the payload (the rest of the packet). A Topic Alias (property 0x23) may only be sent to us
  if we announced a Topic Alias Maximum > 0 in CONNECT; we never do (absent means 0, §3.1.2.11.5), so a
  PUBLISH carrying one, or with an empty topic, is a protocol error.
- PUBACK (§3.4): packet identifier; the reason code and properties may be left out when the reason is 0x00
  (Success) and there are no properties, which makes a PUBACK exactly 4 bytes: ``40 02 <id:2>``.
- SUBSCRIBE (§3.8): flags must be 0x2; packet identifier, properties, then (topic filter, subscription
  options) pairs. Options: bits 0-1 maximum QoS, bit 2 No Local (a protocol error on a shared subscription),
  bit 3 Retain As Published, bits 4-5 Retain Handling. SUBACK (§3.9): packet identifier, properties, one
  reason code per filter (0x00-0x02 granted QoS, >= 0x80 failure).
- PINGREQ is ``C0 00``, PINGRESP ``D0 00`` (§3.12, §3.13). DISCONNECT (§3.14) with Remaining Length 0 means
  reason 0x00 (Normal disconnection), which keeps the session (Session Expiry Interval still applies).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from kyojo.contract.errors import KyojoError

# packet types (§2.1.2)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

#: the largest Remaining Length a Variable Byte Integer can carry (§1.5.5)
MAX_REMAINING_LENGTH = 268_435_455

# property identifiers used here (§2.2.2.2)
SESSION_EXPIRY_INTERVAL = 0x11
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
SERVER_KEEP_ALIVE = 0x13
ASSIGNED_CLIENT_IDENTIFIER = 0x12
REASON_STRING = 0x1F

# property identifier -> value type (§2.2.2.2): 1/2/4-byte integer, varint, utf-8 string, binary, string pair
_BYTE, _U16, _U32, _VBI, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VBI, 0x11: _U32, 0x12: _STR,
    0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR,
    0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
#: fixed-header flags every type but PUBLISH must carry (§2.1.3)
_RESERVED_FLAGS = {t: (0x2 if t in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0x0) for t in range(1, 16) if t != PUBLISH}

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")

PINGREQ_PACKET = b"\xc0\x00"
#: DISCONNECT, reason 0x00 Normal disconnection (the session is kept for its expiry interval)
DISCONNECT_PACKET = b"\xe0\x00"


class MQTTProtocolError(KyojoError):
    """Bytes from the broker that break MQTT v5 (malformed packet or protocol error): drop the connection."""


# -- encoding -------------------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """A Variable Byte Integer (§1.5.5)."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _binary(raw)


def _binary(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("string or binary longer than 65,535 bytes")
    return _u16.pack(len(raw)) + raw


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: bytes | None = None,
) -> bytes:
    """CONNECT (§3.1) with Session Expiry Interval and Receive Maximum; no will, no Topic Alias Maximum."""
    if not 0 <= keepalive <= 0xFFFF or not 1 <= receive_maximum <= 0xFFFF or not 0 <= session_expiry <= 0xFFFFFFFF:
        raise ValueError("keepalive, receive_maximum or session_expiry out of range")
    flags = 0x02 if clean_start else 0x00
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _binary(password)
    props = bytes((SESSION_EXPIRY_INTERVAL,)) + _u32.pack(session_expiry)
    props += bytes((RECEIVE_MAXIMUM,)) + _u16.pack(receive_maximum)
    header = b"\x00\x04MQTT\x05" + bytes((flags,)) + _u16.pack(keepalive) + encode_varint(len(props)) + props
    return _packet(CONNECT << 4, header + payload)


def encode_subscribe(packet_id: int, topic_filter: str | Sequence[str], qos: int = 1) -> bytes:
    """SUBSCRIBE (§3.8) to one or more filters (the SUBACK carries one reason code per filter, in order);
    options: maximum QoS only (No Local stays 0, as shares require)."""
    if not 1 <= packet_id <= 0xFFFF or qos not in (0, 1, 2):
        raise ValueError("bad packet id or QoS")
    filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
    if not filters:
        raise ValueError("SUBSCRIBE needs at least one filter")
    body = _u16.pack(packet_id) + b"\x00" + b"".join(_string(f) + bytes((qos,)) for f in filters)
    return _packet(SUBSCRIBE << 4 | 0x2, body)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK (§3.4), reason Success, in its 4-byte short form."""
    return b"\x40\x02" + _u16.pack(packet_id)


_puback_prefix = b"\x40\x02"


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """Many PUBACKs back to back, for one ``sendall``."""
    pack = _u16.pack
    return b"".join([_puback_prefix + pack(pid) for pid in packet_ids])


# -- decoding -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (§3.2)."""

    session_present: bool
    reason_code: int
    properties: dict[int, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (§3.9): one reason code per filter of the SUBSCRIBE."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: dict[int, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT from the server (§3.14)."""

    reason_code: int
    properties: dict[int, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (§3.13)."""


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (§3.4) received (the data connection never publishes; kept for completeness of parsing)."""

    packet_id: int
    reason_code: int


#: A received application message: (topic, payload, packet id (0 for QoS 0), QoS, DUP flag). The payload is a
#: memoryview into the bytes of the read it came in: use it before the next read, or copy it.
Message = tuple[str, memoryview, int, int, bool]
Control = Connack | Suback | Disconnect | Pingresp | Puback


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when the data ends inside the integer; raises when > 4 bytes."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MQTTProtocolError("malformed Variable Byte Integer (more than 4 bytes)")


def _need(end: int, limit: int, what: str) -> None:
    if end > limit:
        raise MQTTProtocolError(f"malformed packet: {what} runs past the end of the packet")


def decode_properties(data: bytes | memoryview, pos: int, end: int) -> tuple[dict[int, object], int]:
    """Properties at ``pos`` (length first) of a packet that ends at ``end``: (id -> value, position after).

    User Properties (0x26) may repeat and are collected in a list; any other repeated identifier, an unknown
    identifier or a value running past the end is a malformed packet.
    """
    got = decode_varint(data, pos)
    if got is None:
        raise MQTTProtocolError("malformed packet: truncated property length")
    length, pos = got
    stop = pos + length
    _need(stop, end, "properties")
    props: dict[int, object] = {}
    while pos < stop:
        pid = data[pos]
        pos += 1
        kind = _PROPERTY_TYPES.get(pid)
        if kind is None:
            raise MQTTProtocolError(f"malformed packet: unknown property 0x{pid:02x}")
        value: object
        if kind == _BYTE:
            _need(pos + 1, stop, "property")
            value, pos = data[pos], pos + 1
        elif kind == _U16:
            _need(pos + 2, stop, "property")
            value, pos = _u16.unpack_from(data, pos)[0], pos + 2
        elif kind == _U32:
            _need(pos + 4, stop, "property")
            value, pos = _u32.unpack_from(data, pos)[0], pos + 4
        elif kind == _VBI:
            got = decode_varint(data, pos)
            if got is None:
                raise MQTTProtocolError("malformed packet: truncated property")
            value, pos = got
            _need(pos, stop, "property")
        elif kind == _PAIR:
            key, pos = _decode_string(data, pos, stop)
            val, pos = _decode_string(data, pos, stop)
            pairs = props.setdefault(pid, [])
            assert isinstance(pairs, list)
            pairs.append((key, val))
            continue
        else:
            _need(pos + 2, stop, "property")
            n = _u16.unpack_from(data, pos)[0]
            _need(pos + 2 + n, stop, "property")
            raw = bytes(data[pos + 2 : pos + 2 + n])
            pos += 2 + n
            value = raw if kind == _BIN else _utf8(raw)
        if pid in props:
            raise MQTTProtocolError(f"protocol error: property 0x{pid:02x} included twice")
        props[pid] = value
    return props, stop


def _utf8(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MQTTProtocolError("malformed packet: invalid UTF-8 string") from err
    if "\x00" in text:  # §1.5.4: U+0000 must not appear
        raise MQTTProtocolError("malformed packet: U+0000 in a UTF-8 string")
    return text


def _decode_string(data: bytes | memoryview, pos: int, end: int) -> tuple[str, int]:
    _need(pos + 2, end, "string length")
    n = _u16.unpack_from(data, pos)[0]
    _need(pos + 2 + n, end, "string")
    return _utf8(bytes(data[pos + 2 : pos + 2 + n])), pos + 2 + n


class Parser:
    """Incremental parser of the server-to-client byte stream.

    ``feed(data)`` takes whatever one socket read returned and returns the complete packets in it (a packet
    split across reads is kept until its end arrives). Application messages and control packets come back in
    two lists, in arrival order within each; a PUBLISH's payload is a memoryview into the bytes of this read
    (zero copy). Anything that breaks the protocol raises :class:`MQTTProtocolError`; the connection must then
    be dropped (§4.13), and the parser is no longer usable.
    """

    __slots__ = ("_pending", "_topics", "max_packet")

    def __init__(self, max_packet: int = MAX_REMAINING_LENGTH) -> None:
        self._pending = b""
        self._topics: dict[bytes, str] = {}  # topic bytes -> validated str (topics repeat a lot)
        self.max_packet = max_packet

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._pending)

    def feed(self, data: bytes) -> tuple[list[Message], list[Control]]:
        """Parse every complete packet in ``pending + data``."""
        if self._pending:
            data = self._pending + data
        messages: list[Message] = []
        controls: list[Control] = []
        view = memoryview(data)
        size = len(data)
        pos = 0
        topics = self._topics
        unpack16 = _u16.unpack_from
        while pos < size:
            first = data[pos]
            got = decode_varint(data, pos + 1)
            if got is None:
                break
            length, start = got
            end = start + length
            if length > self.max_packet:
                raise MQTTProtocolError(f"packet of {length} bytes exceeds the limit of {self.max_packet}")
            if end > size:
                break
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 0x3
                if qos == 3:
                    raise MQTTProtocolError("malformed packet: PUBLISH with QoS 3")
                if qos == 2:  # we subscribe with maximum QoS 1 (§3.8.3.1): the server must downgrade
                    raise MQTTProtocolError("protocol error: QoS 2 PUBLISH on a maximum-QoS-1 subscription")
                _need(start + 2, end, "topic length")
                tlen = unpack16(data, start)[0]
                p = start + 2 + tlen
                _need(p, end, "topic")
                traw = data[start + 2 : p]
                topic = topics.get(traw)
                if topic is None:
                    topic = _utf8(traw)
                    if not topic:
                        raise MQTTProtocolError("protocol error: empty topic (we allow no Topic Alias)")
                    if "+" in topic or "#" in topic:
                        raise MQTTProtocolError("protocol error: wildcard in a PUBLISH topic")
                    if len(topics) >= 100_000:
                        topics.clear()
                    topics[traw] = topic
                mid = 0
                if qos:
                    _need(p + 2, end, "packet identifier")
                    mid = unpack16(data, p)[0]
                    if mid == 0:
                        raise MQTTProtocolError("protocol error: packet identifier 0")
                    p += 2
                _need(p + 1, end, "properties")
                if data[p] == 0:  # no properties: the overwhelmingly common case
                    p += 1
                else:
                    props, p = decode_properties(data, p, end)
                    if TOPIC_ALIAS in props:
                        raise MQTTProtocolError("protocol error: Topic Alias although Topic Alias Maximum is 0")
                messages.append((topic, view[p:end], mid, qos, bool(first & 0x08)))
            else:
                if kind == 0 or (first & 0x0F) != _RESERVED_FLAGS[kind]:
                    raise MQTTProtocolError(f"malformed packet: type {kind} with flags 0x{first & 0x0F:x}")
                controls.append(_control(kind, view, start, end))
            pos = end
        self._pending = data[pos:] if pos < size else b""
        return messages, controls


def _control(kind: int, data: memoryview, start: int, end: int) -> Control:
    length = end - start
    if kind == CONNACK:
        _need(start + 2, end, "CONNACK")
        ack_flags, reason = data[start], data[start + 1]
        if ack_flags & 0xFE:
            raise MQTTProtocolError("malformed packet: reserved CONNACK flags set")
        props, _ = decode_properties(data, start + 2, end) if length > 2 else ({}, end)
        return Connack(bool(ack_flags & 1), reason, props)
    if kind == SUBACK:
        _need(start + 2, end, "SUBACK")
        pid = _u16.unpack_from(data, start)[0]
        props, p = decode_properties(data, start + 2, end)
        if p >= end:
            raise MQTTProtocolError("malformed packet: SUBACK without reason codes")
        return Suback(pid, tuple(data[p:end]), props)
    if kind == PINGRESP:
        if length:
            raise MQTTProtocolError("malformed packet: PINGRESP with a body")
        return Pingresp()
    if kind == DISCONNECT:
        if not length:
            return Disconnect(0)
        props, _ = decode_properties(data, start + 1, end) if length > 1 else ({}, end)
        return Disconnect(data[start], props)
    if kind == PUBACK:
        _need(start + 2, end, "PUBACK")
        return Puback(_u16.unpack_from(data, start)[0], data[start + 2] if length > 2 else 0)
    raise MQTTProtocolError(f"protocol error: unexpected packet type {kind} from the server")
