"""Where the household page listens: the home LAN, never the uplink.

:func:`choose_addresses` is pure (interfaces and uplinks in, addresses out) so the rule is tested on any machine;
:func:`local_interfaces` and :func:`default_route_interfaces` read this machine's (Linux ``/proc`` and ``/sys``,
readable under the unit's ``ProtectKernelTunables``/``ProtectSystem``, no netlink socket needed).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_agent.config import WebSection
from kyojo.contract.vocab import KyojoError

SIOCGIFADDR = 0x8915  # <linux/sockios.h>: get an interface's IPv4 address


class ListenError(KyojoError, ValueError):
    """The ``[web]`` section names nothing to listen on, or names the uplink."""


def default_route_interfaces(proc: Path = Path("/proc/self/net")) -> set[str]:
    """Interfaces that carry a default route (IPv4 ``route``, IPv6 ``ipv6_route``): the uplink."""
    found: set[str] = set()
    try:
        for line in (proc / "route").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 2 and cols[1] == "00000000" and cols[7] == "00000000":
                found.add(cols[0])
    except OSError:
        pass
    try:
        for line in (proc / "ipv6_route").read_text().splitlines():
            cols = line.split()
            # destination ::/0 with a non-zero next hop, on a real interface
            if len(cols) == 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[4] != "0" * 32:
                found.add(cols[9])
    except OSError:
        pass
    return found


def _ipv4_of(name: str) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return []
    return [socket.inet_ntoa(raw[20:24])]


def _ipv6_by_interface(proc: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        lines = (proc / "if_inet6").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        cols = line.split()
        if len(cols) != 6:
            continue
        addr = ipaddress.IPv6Address(bytes.fromhex(cols[0]))
        if addr.is_link_local:
            continue  # needs a scope id; a phone on the LAN reaches the IPv4 or a global/ULA address
        out.setdefault(cols[5], []).append(str(addr))
    return out


def local_interfaces(
    sys_net: Path = Path("/sys/class/net"), proc: Path = Path("/proc/self/net")
) -> dict[str, list[str]]:
    """Every interface of this machine and its addresses (IPv4 first)."""
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        names = []
    v6 = _ipv6_by_interface(proc)
    return {name: _ipv4_of(name) + v6.get(name, []) for name in names}


def choose_addresses(web: WebSection, interfaces: Mapping[str, Sequence[str]], uplinks: set[str]) -> list[str]:
    """The addresses to listen on (loopback first), by the rule of :class:`WebSection`."""
    never = set(web.uplink) or set(uplinks)
    clash = set(web.interfaces) & never
    if clash:
        raise ListenError(f"[web] interfaces names the uplink {', '.join(sorted(clash))}: the page is for the LAN")
    uplink_addrs = {a for name in never for a in interfaces.get(name, ())}
    out: list[str] = []
    if web.loopback:
        out.append("127.0.0.1")
    if web.interfaces or web.addresses:
        for name in web.interfaces:
            if name not in interfaces:
                raise ListenError(f"[web] interfaces: no interface {name!r} on this machine")
            out += interfaces[name]
        for addr in web.addresses:
            if addr in uplink_addrs:
                raise ListenError(f"[web] addresses: {addr} belongs to the uplink")
            out.append(addr)
    else:
        for name, addrs in interfaces.items():
            if name in never:
                continue
            out += [a for a in addrs if not ipaddress.ip_address(a).is_loopback]
    seen: list[str] = []
    for a in out:
        if a not in seen and (web.loopback or not ipaddress.ip_address(a).is_loopback):
            seen.append(a)
    if not seen:
        raise ListenError("[web]: no address to listen on (no LAN interface found and loopback = false)")
    return seen


def listen_addresses(web: WebSection) -> list[str]:
    """:func:`choose_addresses` for this machine."""
    return choose_addresses(web, local_interfaces(), default_route_interfaces())
