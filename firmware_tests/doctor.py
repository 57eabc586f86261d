"""``kyojo doctor``: one screen that tells an installer whether this gateway can work.

Each check is a plain function returning a :class:`Check` (``ok`` True/False, or None when it cannot be decided
on this machine, e.g. no systemd-timesyncd). Nothing here changes the system. :func:`run_all` builds the list
from the gateway's paths; :func:`render` prints it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Check",
    "bluetooth_adapter",
    "broker_reachable",
    "broker_tls",
    "certificate_valid",
    "clock_synchronised",
    "crl_fresh",
    "disk_space",
    "render",
    "renewal_pending",
    "run_all",
    "serial_device",
    "timer_enabled",
]

#: where ``systemctl enable`` links a timer (``<etc>/timers.target.wants/<timer>``)
SYSTEMD_ETC = Path("/etc/systemd/system")
#: where the packaged units are installed (``systemctl cat`` would find them there)
SYSTEMD_UNIT_DIRS = (Path("/etc/systemd/system"), Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))

#: systemd-timesyncd touches this file once the clock is synchronised (it is removed at boot).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool | None
    detail: str


def broker_reachable(host: str, port: int, timeout: float = 2.0) -> Check:
    """TCP connect to the (local or city) broker."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return Check("broker reachable", True, f"{host}:{port} accepts connections")
    except OSError as err:
        return Check("broker reachable", False, f"{host}:{port}: {err.strerror or err}")


def clock_synchronised(flag: Path = TIMESYNC_FLAG, now: dt.datetime | None = None) -> Check:
    """TLS needs a correct clock (certificate validity). systemd-timesyncd's flag file, else unknown."""
    now = now or dt.datetime.now(dt.UTC)
    if now.year < 2024:
        return Check("clock synchronised", False, f"clock says {now:%Y-%m-%d}: no RTC and no NTP yet?")
    if flag.exists():
        return Check("clock synchronised", True, "systemd-timesyncd reports synchronised")
    if flag.parent.exists():
        return Check("clock synchronised", False, "systemd-timesyncd has not synchronised yet")
    return Check("clock synchronised", None, "no systemd-timesyncd state; check chrony/ntpd by hand")


def disk_space(path: Path, min_free_bytes: int = 512 * 1024 * 1024) -> Check:
    """Free space where the raw store and outbox live."""
    try:
        usage = shutil.disk_usage(path)
    except OSError as err:
        return Check("disk space", False, f"{path}: {err}")
    free_mb = usage.free // (1024 * 1024)
    return Check("disk space", usage.free >= min_free_bytes, f"{free_mb} MiB free on {path}")


def certificate_valid(cert_path: Path, now: dt.datetime | None = None) -> Check:
    """The gateway certificate exists and is inside its validity period; says when to renew."""
    from cryptography import x509

    from provisioning.pki import renew_at

    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        return Check("certificate", False, f"{cert_path}: {err}")
    if now < cert.not_valid_before_utc:
        return Check("certificate", False, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d} (clock?)")
    if now > cert.not_valid_after_utc:
        return Check("certificate", False, f"expired {cert.not_valid_after_utc:%Y-%m-%d}: enroll again")
    due = renew_at(cert)
    when = "renewal due now" if now >= due else f"renew after {due:%Y-%m-%d}"
    return Check("certificate", True, f"valid until {cert.not_valid_after_utc:%Y-%m-%d}; {when}")


def renewal_pending(state_dir: Path) -> Check:
    """A renewal request made by kyojo-renew.timer that still waits for the CA (the old certificate is in use)."""
    from provisioning.pki import pending_renewal

    waiting = pending_renewal(state_dir)
    if waiting is None:
        return Check("renewal request", True, "none waiting")
    return Check(
        "renewal request",
        False,
        f"{waiting} waits for the CA: kyojo provision sign {waiting.name} --ca-dir <ca-dir>, then "
        "kyojo provision install <cert>",
    )


def timer_enabled(timer: str, *, etc: Path = SYSTEMD_ETC, unit_dirs: Sequence[Path] = SYSTEMD_UNIT_DIRS) -> Check:
    """``timer`` is installed and enabled (the link ``systemctl enable`` makes under ``timers.target.wants``)."""
    if (etc / "timers.target.wants" / timer).exists():
        return Check(timer, True, "enabled")
    if any((d / timer).exists() for d in unit_dirs):
        return Check(timer, False, f"installed but not enabled: systemctl enable --now {timer}")
    return Check(timer, False, f"not installed: copy systemd/{timer} (and its .service) to {etc}, then enable it")


def crl_fresh(path: Path, now: dt.datetime | None = None, margin: dt.timedelta = dt.timedelta(days=2)) -> Check:
    """The broker's CRL is readable and its nextUpdate is more than ``margin`` away (an expired CRL makes every
    TLS handshake fail: the whole city is locked out)."""
    from cryptography import x509

    now = now or dt.datetime.now(dt.UTC)
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError) as err:
        return Check("CRL", False, f"{path}: {err}")
    nxt = crl.next_update_utc
    revoked = len(list(crl))
    if nxt is None:
        return Check("CRL", False, f"{path}: no nextUpdate")
    if now >= nxt:
        return Check("CRL", False, f"EXPIRED {nxt:%Y-%m-%d %H:%M} UTC: every client is refused; run kyojo-crl.service")
    if nxt - now < margin:
        return Check("CRL", False, f"expires {nxt:%Y-%m-%d %H:%M} UTC (soon): is kyojo-crl.timer running?")
    return Check("CRL", True, f"next update {nxt:%Y-%m-%d}, {revoked} revoked")


# MQTT v5 CONNECT, clean start, keepalive 30, client id "doctor" (the broker replaces it by the CN).
_CONNECT = bytes([0x10, 19, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 6]) + b"doctor"


def broker_tls(host: str, port: int, ca: Path, cert: Path, key: Path, timeout: float = 5.0) -> Check:
    """mTLS handshake with this gateway's certificate and an MQTT v5 CONNECT: CONNACK reason 0 = accepted.

    Note: this takes over the agent's session for a moment (client id = CN on the broker); run it with the agent
    stopped, or accept one reconnect.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(_CONNECT)
            data = tls.recv(64)
            tls.sendall(b"\xe0\x00")  # DISCONNECT
    except ssl.SSLError as err:
        return Check("broker with certificate", False, f"TLS refused: {err.reason or err}")
    except OSError as err:
        return Check("broker with certificate", False, f"{host}:{port}: {err}")
    if len(data) < 4 or data[0] != 0x20:
        return Check("broker with certificate", False, "no CONNACK (closed: revoked certificate or expired CRL?)")
    if data[3] != 0:
        return Check("broker with certificate", False, f"CONNACK reason 0x{data[3]:02x}")
    return Check("broker with certificate", True, f"{host}:{port} accepted this gateway's certificate")


def serial_device(paths: Sequence[Path]) -> Check:
    """Every configured serial port exists, is a character device, and is readable+writable by us."""
    if not paths:
        return Check("serial devices", None, "none configured")
    bad: list[str] = []
    for path in paths:
        try:
            mode = path.stat().st_mode
        except OSError:
            bad.append(f"{path} missing")
            continue
        if not stat.S_ISCHR(mode):
            bad.append(f"{path} is not a character device")
        elif not os.access(path, os.R_OK | os.W_OK):
            bad.append(f"{path} not accessible (group dialout?)")
    if bad:
        return Check("serial devices", False, "; ".join(bad))
    return Check("serial devices", True, ", ".join(str(p) for p in paths))


def bluetooth_adapter(sys_class: Path = Path("/sys/class/bluetooth")) -> Check:
    """At least one HCI adapter known to the kernel (BlueZ then exposes it over D-Bus)."""
    adapters = sorted(p.name for p in sys_class.glob("hci*")) if sys_class.exists() else []
    if adapters:
        return Check("bluetooth adapter", True, ", ".join(adapters))
    return Check("bluetooth adapter", False, "no hci adapter (rfkill? firmware? dtoverlay=disable-bt?)")


def database_intact(state_dir: Path) -> Check:
    """A gateway database the agent found damaged and set aside (``agent.sqlite3.damaged-<time>``): the household's
    consents and log were restored from the backup, the raw readings of before are gone; the file is kept for
    inspection until the installer removes it."""
    damaged = sorted(p.name for p in state_dir.glob("*.damaged-*") if not p.name.endswith(("-wal", "-shm")))
    if not damaged:
        return Check("database", True, "no damaged database set aside")
    return Check(
        "database",
        None,
        f"the agent found its database damaged and started a fresh one ({', '.join(damaged[-3:])} kept for "
        "inspection; consents and the log were restored from the backup: see `kyojo audit show`)",
    )


def run_all(
    *,
    state_dir: Path,
    local_broker: tuple[str, int] | None = ("127.0.0.1", 1883),
    city_broker: tuple[str, int] | None = None,
    serial_ports: Sequence[Path] = (),
    bluetooth: bool = True,
    timers: Sequence[str] = ("kyojo-renew.timer",),
    crl: Path | None = None,
    lan_brokers: Sequence[tuple[str, str, int]] = (),
) -> list[Check]:
    """The standard set for a gateway whose identity lives in ``<state_dir>/tls`` (``crl``: on the broker host;
    ``lan_brokers``: (plugs entry id, host, port) of each plugs entry's LAN broker)."""
    tls = state_dir / "tls"
    checks = [clock_synchronised(), disk_space(state_dir), database_intact(state_dir)]
    if local_broker is not None:
        checks.append(broker_reachable(*local_broker))
    checks.append(certificate_valid(tls / "identity.crt"))
    checks.append(renewal_pending(state_dir))
    checks += [timer_enabled(t) for t in timers]
    if crl is not None:
        checks.append(crl_fresh(crl))
    for name, host, port in lan_brokers:  # plugs publish to a LAN Mosquitto on the gateway: none, nothing arrives
        lan = broker_reachable(host, port)
        detail = lan.detail if lan.ok else f"{lan.detail}: set up the LAN broker (docs/LAN.md, lan-broker-config)"
        checks.append(Check(f"LAN broker ({name})", lan.ok, detail))
    if city_broker is not None:
        checks.append(broker_tls(*city_broker, tls / "ca.crt", tls / "identity.crt", tls / "identity.key"))
    checks.append(serial_device(serial_ports))
    if bluetooth:
        checks.append(bluetooth_adapter())
    return checks


def render(checks: Iterable[Check]) -> str:
    """One line per check: ``OK``/``FAIL``/``??`` + name + detail."""
    mark = {True: "OK  ", False: "FAIL", None: "??  "}
    return "\n".join(f"{mark[c.ok]} {c.name:<24} {c.detail}" for c in checks)
