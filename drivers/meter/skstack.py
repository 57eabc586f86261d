"""SKSTACK IP (ROHM BP35A1 and compatible Wi-SUN modules) over a serial port: B-route to the smart meter.

Two layers:

- sans-IO line parsing (:func:`parse_line`): ``EVENT <code> <sender> [<param>]``, ``ERXUDP ...`` with the
  ECHONET Lite frame as hex text, ``EPANDESC`` blocks, ``OK`` / ``FAIL ERxx``;
- :class:`SkStack`: blocking command/response over any object with ``write``, ``read``, ``in_waiting`` and
  ``close`` (a :class:`serial.Serial`); :class:`BRouteSession` runs the B-route procedure on it.

The module's conventions (BP35A1 command reference): commands end with CRLF; the module echoes each command
(until ``SKSREG SFE 0``); most commands answer ``OK`` or ``FAIL ER<nn>`` (ER04 unsupported command, ER05 wrong
number of arguments, ER06 argument out of range, ER09 UART input error, ER10 execution failed); ``SKLL64``
answers only the IPv6 link-local address; asynchronous ``EVENT`` and ``ERXUDP`` lines can arrive at any time.

B-route procedure: ``SKSETPWD C <password>`` (12 chars), ``SKSETRBID <id>`` (32 chars), ``SKSCAN 2 FFFFFFFF <d>``
(active scan of all channels: ``EVENT 20`` + ``EPANDESC`` per beacon, ``EVENT 22`` when done; a longer duration
``d`` scans longer), ``SKSREG S2 <channel>``, ``SKSREG S3 <PAN ID>``, ``SKLL64 <MAC>`` -> IPv6 address,
``SKJOIN <IPv6>`` -> ``EVENT 25`` (PANA authentication succeeded) or ``EVENT 24`` (failed). Then ECHONET Lite over
UDP port 3610 (0x0E1A): ``SKSENDTO 1 <IPv6> 0E1A 1 <len hex4> <binary frame>`` (handle 1, security on); the
module answers ``EVENT 21 <IPv6> <00 ok|01 failed>`` and ``OK``, and the meter's answer comes as ``ERXUDP``.
``EVENT 29`` (PANA session lifetime expired), ``EVENT 26``/``27``/``28`` (session terminated) mean the session
is gone: the module may re-authenticate by itself (another ``EVENT 25``); if not, we ``SKJOIN`` again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from drivers.meter.echonet import ESV, SMART_METER, Frame, decode_frame, get_request, is_reserved_esv
from kyojo.contract.vocab import KyojoError, ParseError

log = logging.getLogger(__name__)

#: ECHONET Lite UDP port 3610.
ECHONET_PORT = 0x0E1A

# EVENT codes (BP35A1 command reference).
EV_NS = 0x01  # neighbour solicitation received
EV_NA = 0x02  # neighbour advertisement received
EV_ECHO_REQ = 0x05  # ICMP echo request received
EV_ED_SCAN_DONE = 0x1F
EV_BEACON = 0x20  # beacon received (an EPANDESC block follows)
EV_UDP_SENT = 0x21  # UDP send done; param 00 success, 01 failure, 02 address resolution pending
EV_SCAN_DONE = 0x22  # active scan finished
EV_PANA_FAILED = 0x24  # PANA connection (authentication) failed
EV_PANA_OK = 0x25  # PANA connection established
EV_PEER_TERM = 0x26  # session termination requested by the peer
EV_TERM_OK = 0x27  # session terminated
EV_TERM_TIMEOUT = 0x28  # termination request got no answer: terminated anyway
EV_SESSION_EXPIRED = 0x29  # PANA session lifetime expired
EV_SEND_LIMIT = 0x32  # ARIB STD-T108 transmission time limit reached: sending is suspended
EV_SEND_RESUMED = 0x33  # transmission time limit lifted

SESSION_DOWN = frozenset({EV_PANA_FAILED, EV_PEER_TERM, EV_TERM_OK, EV_TERM_TIMEOUT, EV_SESSION_EXPIRED})

#: FAIL codes (BP35A1): what each means.
FAIL_CODES = {
    "ER04": "unsupported command",
    "ER05": "wrong number of arguments",
    "ER06": "argument out of range",
    "ER09": "UART input error",
    "ER10": "command failed",
}


class SkStackError(KyojoError):
    """The module refused a command (``FAIL ERxx``), did not answer, or the B-route procedure failed."""

    def __init__(self, message: str, *, command: str = "", code: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.code = code


class ModuleTimeout(SkStackError, TimeoutError):
    """The module did not answer in time (also a builtin TimeoutError)."""


class JoinFailed(SkStackError):
    """PANA authentication failed (``EVENT 24``): wrong B-route ID/password, or the meter refused."""


class NoMeterFound(SkStackError):
    """Active scans at every duration found no beacon carrying our B-route pairing."""


class SessionLost(SkStackError):
    """The PANA session ended (``EVENT 26``-``29``) while we were using it."""


class Aborted(SkStackError):
    """:meth:`SkStack.abort` was called (the driver is stopping)."""


# ----------------------------------------------------------------------------------------------------------
# sans-IO line parsing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """``EVENT <code> <sender> [<param>]`` (BP35C0 adds a side field, ignored)."""

    code: int
    sender: str
    param: str = ""


@dataclass(frozen=True, slots=True)
class RxUdp:
    """``ERXUDP <sender> <dest> <rport> <lport> <senderlla> <secured> <datalen> <data hex>`` (BP35A1); the BP35C0
    inserts RSSI before and SIDE after ``secured``."""

    sender: str
    dest: str
    rport: int
    lport: int
    sender_lla: str
    secured: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class PanDesc:
    """One ``EPANDESC`` block: a beacon heard during ``SKSCAN``."""

    channel: int
    channel_page: int
    pan_id: int
    addr: str
    lqi: int
    pair_id: str = ""


def parse_line(line: str) -> Event | RxUdp | None:
    """Parse an asynchronous line (``EVENT`` / ``ERXUDP``); None for anything else. Raises ParseError
    (``bad_event`` / ``bad_erxudp``) on a malformed one."""
    tokens = line.split()
    if not tokens:
        return None
    if tokens[0] == "EVENT":
        if len(tokens) < 3:
            raise ParseError("bad_event", raw=line)
        try:
            code = int(tokens[1], 16)
        except ValueError:
            raise ParseError("bad_event", raw=line) from None
        return Event(code, tokens[2], tokens[3] if len(tokens) > 3 else "")
    if tokens[0] == "ERXUDP":
        if len(tokens) == 9:  # BP35A1
            secured = tokens[6]
        elif len(tokens) == 11:  # BP35C0: ... <RSSI> <SECURED> <SIDE> ...
            secured = tokens[7]
        else:
            raise ParseError("bad_erxudp", raw=line, detail=f"{len(tokens)} fields")
        try:
            length = int(tokens[-2], 16)
            data = bytes.fromhex(tokens[-1])
            rport, lport = int(tokens[3], 16), int(tokens[4], 16)
        except ValueError:
            raise ParseError("bad_erxudp", raw=line, detail="non-hex field") from None
        if len(data) != length:
            raise ParseError("bad_erxudp", raw=line, detail=f"DATALEN {length} but {len(data)} bytes")
        return RxUdp(tokens[1], tokens[2], rport, lport, tokens[5], secured == "1", data)
    return None


def parse_pandesc(fields: dict[str, str]) -> PanDesc:
    """Build a PanDesc from an EPANDESC block's ``Key:Value`` lines (hex values)."""
    try:
        return PanDesc(
            channel=int(fields["Channel"], 16),
            channel_page=int(fields.get("Channel Page", "0"), 16),
            pan_id=int(fields["Pan ID"], 16),
            addr=fields["Addr"],
            lqi=int(fields.get("LQI", "0"), 16),
            pair_id=fields.get("PairID", ""),
        )
    except (KeyError, ValueError) as err:
        raise ParseError("bad_epandesc", detail=str(err)) from None


def link_local(mac: str) -> str:
    """The IPv6 link-local address SKLL64 derives from a 64-bit MAC (EUI-64, universal/local bit flipped)."""
    b = bytearray.fromhex(mac)
    b[0] ^= 0x02
    groups = [b[i : i + 2].hex().upper() for i in range(0, 8, 2)]
    return "FE80:0000:0000:0000:" + ":".join(groups)


# ----------------------------------------------------------------------------------------------------------
# blocking I/O
# ----------------------------------------------------------------------------------------------------------


class SerialLike(Protocol):
    """What :class:`SkStack` needs from a port (``serial.Serial`` opened with a short ``timeout``)."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class SkStack:
    """Command/response with a Wi-SUN module. Asynchronous lines that arrive while waiting for a command's
    answer are queued (:attr:`pending`), never dropped."""

    port: SerialLike
    timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    pending: deque[str] = field(default_factory=deque)
    _buf: bytearray = field(default_factory=bytearray)
    _abort: bool = False

    def abort(self) -> None:
        """Make every wait raise :class:`Aborted` (thread-safe enough: a flag read between short reads)."""
        self._abort = True

    def _readline(self, deadline: float) -> str | None:
        while True:
            nl = self._buf.find(b"\r\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 2]
                return line.decode("ascii", errors="replace")
            if self._abort:
                raise Aborted("aborted")
            if self.clock() >= deadline:
                return None
            chunk = self.port.read(max(1, self.port.in_waiting))
            if chunk:
                self._buf += chunk

    def next_line(self, timeout: float) -> str | None:
        """The next line: a queued asynchronous one first, else from the port (None on timeout)."""
        if self.pending:
            return self.pending.popleft()
        deadline = self.clock() + timeout
        while True:
            line = self._readline(deadline)
            if line is None or line.strip():
                return line

    def write_command(self, command: str, data: bytes = b"") -> None:
        """Send ``command`` + CRLF, or ``command`` + binary ``data`` (SKSENDTO: the length field delimits it)."""
        self.port.write(command.encode("ascii") + (data if data else b"\r\n"))

    def command(self, command: str, *, timeout: float | None = None, expect_ok: bool = True) -> list[str]:
        """Send a command and collect its answer lines up to ``OK`` (returned without the echo and ``OK``;
        ``OK 01``-style values are returned as the last line). ``expect_ok=False``: return the first answer
        line (SKLL64). Raises SkStackError on ``FAIL``, ModuleTimeout when nothing conclusive arrives."""
        verb = command.split(" ", 1)[0]
        shown = verb if verb in ("SKSETPWD", "SKSETRBID") else command  # never log secrets
        self.write_command(command)
        deadline = self.clock() + (self.timeout if timeout is None else timeout)
        lines: list[str] = []
        while True:
            line = self._readline(deadline)
            if line is None:
                raise ModuleTimeout(f"no answer to {shown}", command=shown)
            line = line.strip()
            if not line or line in (command, verb) or line.startswith(verb + " "):
                continue  # blank, or the module's echo of our command
            if line.startswith(("EVENT ", "ERXUDP ", "EPANDESC", "Channel", "Pan ID", "Addr", "LQI", "PairID")):
                self.pending.append(line)
                continue
            if line.startswith("FAIL"):
                code = line.split()[1] if len(line.split()) > 1 else ""
                raise SkStackError(
                    f"{shown}: FAIL {code} ({FAIL_CODES.get(code, 'unknown')})", command=shown, code=code
                )
            if line == "OK":
                return lines
            if line.startswith("OK "):
                return [*lines, line[3:]]
            if not expect_ok:
                return [line]
            lines.append(line)

    def wait_event(self, codes: set[int], timeout: float, on_other: Callable[[str], None] | None = None) -> Event:
        """Wait for an EVENT with one of ``codes``; other lines go to ``on_other`` (or are dropped)."""
        deadline = self.clock() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - self.clock()))
            if line is None:
                raise ModuleTimeout(f"no EVENT {sorted(codes)} within {timeout:.0f} s")
            parsed = parse_line(line.strip())
            if isinstance(parsed, Event) and parsed.code in codes:
                return parsed
            if on_other is not None:
                on_other(line)

    def close(self) -> None:
        """Close the port."""
        self.port.close()


@dataclass(slots=True)
class BRouteSession:
    """The B-route procedure and ECHONET Lite Get polling on an :class:`SkStack` (blocking; run in a thread).

    ``scan_durations``: SKSCAN durations tried in turn until a beacon answers. ``rejoin_grace_s``: after a
    session-down EVENT, how long to wait for the module's own re-authentication before sending SKJOIN.
    """

    sk: SkStack
    rbid: str
    password: str
    scan_durations: tuple[int, ...] = (4, 5, 6, 7, 8)
    join_timeout_s: float = 60.0
    response_timeout_s: float = 10.0
    rejoin_grace_s: float = 10.0
    channel: int | None = None
    pan_id: int | None = None
    mac: str | None = None
    ipv6: str | None = None
    version: str = ""
    joined: bool = False
    joins: int = 0
    join_failures: int = 0
    sessions_lost: int = 0
    timeouts: int = 0
    bad_lines: int = 0
    _tid: int = 0
    inbox: list[Frame] = field(default_factory=list)

    def open(self) -> None:
        """Check the module, set the credentials, find the meter and join (scan skipped if already known)."""
        ver = self.sk.command("SKVER")
        self.version = ver[-1].removeprefix("EVER ") if ver else ""
        # ROPT: ERXUDP data format, "OK 00" binary / "OK 01" hex text. WOPT writes flash (limited cycles):
        # only when needed.
        try:
            ropt = self.sk.command("ROPT")
            if ropt and ropt[-1] != "01":
                self.sk.command("WOPT 01")
        except SkStackError as err:
            if err.code != "ER04":  # modules without ROPT/WOPT always send hex text
                raise
        self.sk.command(f"SKSETPWD {len(self.password):X} {self.password}")
        self.sk.command(f"SKSETRBID {self.rbid}")
        if self.mac is None or self.channel is None or self.pan_id is None:
            self.scan()
        self.join()

    def scan(self) -> PanDesc:
        """Active scan with growing durations until a beacon (EPANDESC) is heard."""
        for duration in self.scan_durations:
            self.sk.command(f"SKSCAN 2 FFFFFFFF {duration}")
            # A scan listens about 0.01 s x (2**d + 1) per channel, on up to 28 channels (BP35A1 reference).
            timeout = 28 * 0.01 * (2**duration + 1) + 10.0
            found: PanDesc | None = None
            block: dict[str, str] | None = None
            deadline = self.sk.clock() + timeout
            while True:
                line = self.sk.next_line(max(0.0, deadline - self.sk.clock()))
                if line is None:
                    raise ModuleTimeout(f"SKSCAN {duration} did not finish")
                text = line.strip()
                if text == "EPANDESC":
                    block = {}
                    continue
                if block is not None and ":" in text and not text.startswith("EVENT"):
                    key, _, value = text.partition(":")
                    block[key.strip()] = value.strip()
                    if key.strip() == "PairID" or {"Channel", "Pan ID", "Addr", "LQI"} <= block.keys():
                        found = found or parse_pandesc(block)
                    continue
                block = None
                ev = self._parse(text)
                if isinstance(ev, Event) and ev.code == EV_SCAN_DONE:
                    break
            if found is not None:
                self.channel, self.pan_id, self.mac = found.channel, found.pan_id, found.addr
                return found
        raise NoMeterFound(f"no smart meter beacon after SKSCAN durations {self.scan_durations}")

    def join(self) -> None:
        """Register channel and PAN, resolve the meter's address, authenticate (EVENT 25 or JoinFailed)."""
        assert self.channel is not None
        assert self.pan_id is not None
        assert self.mac is not None
        self.joined = False
        self.sk.command(f"SKSREG S2 {self.channel:X}")
        self.sk.command(f"SKSREG S3 {self.pan_id:X}")
        self.ipv6 = self.sk.command(f"SKLL64 {self.mac}", expect_ok=False)[0]
        self.sk.command(f"SKJOIN {self.ipv6}")
        ev = self.sk.wait_event({EV_PANA_OK, EV_PANA_FAILED}, self.join_timeout_s, on_other=self._other)
        if ev.code == EV_PANA_FAILED:
            self.join_failures += 1
            raise JoinFailed("PANA authentication failed (EVENT 24): check the B-route ID and password")
        self.joined = True
        self.joins += 1

    def rejoin(self) -> None:
        """After a session-down EVENT: wait ``rejoin_grace_s`` for the module's own EVENT 25, else SKJOIN; if
        that fails, scan again and join (JoinFailed propagates after that)."""
        self.sessions_lost += 1
        self.joined = False
        try:
            self.sk.wait_event({EV_PANA_OK}, self.rejoin_grace_s, on_other=self._other)
            self.joined = True
            self.joins += 1
            return
        except ModuleTimeout:
            pass
        try:
            self.join()
        except (JoinFailed, ModuleTimeout):
            self.scan()
            self.join()

    def _parse(self, line: str) -> Event | RxUdp | None:
        try:
            return parse_line(line)
        except ParseError:
            self.bad_lines += 1
            return None

    def _other(self, line: str) -> None:
        """A line nobody waited for: keep ECHONET INF frames from the meter."""
        msg = self._parse(line.strip())
        if isinstance(msg, RxUdp) and msg.rport == ECHONET_PORT:
            try:
                frame = decode_frame(msg.data)
            except ParseError:
                self.bad_lines += 1
                return
            if frame.esv in (ESV.INF, ESV.INFC) or is_reserved_esv(frame.esv):
                self.inbox.append(frame)  # a reserved ESV goes to the decoder, which counts it

    def _next_tid(self) -> int:
        # Skip TIDs with 0x0A/0x0D bytes: the module's echo of SKSENDTO includes the binary frame, and a CR/LF
        # inside it would split the echo line.
        while True:
            self._tid = (self._tid + 1) & 0xFFFF
            if not {0x0A, 0x0D} & set(self._tid.to_bytes(2, "big")):
                return self._tid

    def get(self, epcs: tuple[int, ...]) -> Frame | None:
        """Send a Get to the meter and wait for its Get_Res / Get_SNA with our TID (None on timeout).

        Raises SessionLost if a session-down EVENT arrives first. INF frames met on the way land in ``inbox``.
        """
        assert self.ipv6 is not None
        tid = self._next_tid()
        frame = get_request(tid, epcs)
        header = f"SKSENDTO 1 {self.ipv6} {ECHONET_PORT:04X} 1 {len(frame):04X} "
        self.sk.write_command(header, frame)
        deadline = self.sk.clock() + self.response_timeout_s
        while True:
            line = self.sk.next_line(max(0.0, deadline - self.sk.clock()))
            if line is None:
                self.timeouts += 1
                return None
            text = line.strip()
            if text.startswith("SKSENDTO") or text == "OK":
                continue  # echo (with the binary frame) and the command's OK
            if text.startswith("FAIL"):
                raise SkStackError(f"SKSENDTO: {text}", command="SKSENDTO", code=text.partition(" ")[2])
            msg = self._parse(text)
            if isinstance(msg, Event):
                if msg.code in SESSION_DOWN:
                    raise SessionLost(f"PANA session down (EVENT {msg.code:02X})")
                continue  # EVENT 21 (sent), 02 (NA), 32/33 (ARIB send limit), ...
            if isinstance(msg, RxUdp) and msg.rport == ECHONET_PORT:
                try:
                    reply = decode_frame(msg.data)
                except ParseError:
                    self.bad_lines += 1
                    continue
                if reply.esv in (ESV.INF, ESV.INFC) or is_reserved_esv(reply.esv):
                    self.inbox.append(reply)
                elif (
                    reply.tid == tid
                    and reply.seoj.class_code == SMART_METER.class_code
                    and reply.esv in (ESV.GET_RES, ESV.GET_SNA)
                ):
                    return reply

    def poll(self, epcs: tuple[int, ...]) -> list[Frame]:
        """One poll: the Get response (if any) after the INF frames received meanwhile; rejoins if the
        session dropped (and retries the Get once)."""
        try:
            reply = self.get(epcs)
        except SessionLost:
            log.warning("B-route session lost; rejoining")
            self.rejoin()
            reply = self.get(epcs)
        frames, self.inbox = self.inbox, []
        return [*frames, reply] if reply is not None else frames

    def close(self) -> None:
        """End the PANA session politely (SKTERM) when joined; errors are ignored (the port may be gone)."""
        if self.joined:
            with contextlib.suppress(SkStackError, OSError):
                self.sk.command("SKTERM", timeout=2.0)
            self.joined = False
