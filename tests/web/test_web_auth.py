"""Sign-in and the door every request goes through: pairing codes, sessions, CSRF, lockout, headers, language,
and where the page listens. In-process (Starlette's TestClient) against the real app and its SQLite databases;
the listener test starts the real ``kyojo web serve``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.routing import Mount, Route
from typer.testing import CliRunner

from edge_agent.config import WebSection, load_config
from edge_agent.web.auth import AuthError, AuthStore, connect, normalise_code
from edge_agent.web.net import (
    ListenError,
    choose_addresses,
    default_route_interfaces,
    listen_addresses,
    local_interfaces,
)
from kyojo.cli import app as kyojo_app
from tests.web.appkit import csrf_of, make_client, sign_in, site_of, write_config


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_page_or_api_answers_without_a_session(config: Path) -> None:
    client = make_client(config)
    app = client.app.app if hasattr(client.app, "app") else client.app  # type: ignore[attr-defined]
    routes = [r for r in client.app.routes if isinstance(r, Route)]  # type: ignore[attr-defined]
    assert {"/", "/signin"} <= {r.path for r in routes}, app
    checked = 0
    for route in routes:
        path = _concrete(route.path)
        for method in sorted(route.methods or {"GET"}):
            if route.path in ("/signin", "/lang") or method == "HEAD":
                continue
            r = client.request(method, path)
            if method == "GET":
                assert r.status_code == 303, (method, path, r.status_code)
                assert r.headers["location"].startswith("/signin")
                assert client.get(path, headers={"HX-Request": "true"}).status_code == 401, path
            else:
                assert r.status_code == 401, (method, path, r.status_code)
            assert "kyojo_session" not in r.headers.get("set-cookie", "")
            checked += 1
    assert checked >= 2
    # what a stranger does see: the sign-in page, and the static files it needs
    assert client.get("/signin").status_code == 200
    assert client.get("/static/kyojo.css").status_code == 200
    assert any(isinstance(r, Mount) and r.path == "/static" for r in client.app.routes)  # type: ignore[attr-defined]


def test_first_code_makes_an_admin_who_invites_a_member(config: Path) -> None:
    result = CliRunner().invoke(kyojo_app, ["web", "pair-code", "-c", str(config)])
    assert result.exit_code == 0, result.output
    code = re.search(r"\b(\d{4} \d{4})\b", result.stdout)
    assert code, result.stdout
    admin = make_client(config)
    page = admin.get("/signin")
    assert "ようこそ" in page.text  # first run: the welcome text
    r = admin.post("/signin", data={"code": code.group(1), "name": "母", "csrf": csrf_of(page.text)})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP in this config
    site = site_of(admin)
    assert [(u.name, u.role.value) for u in site.auth.users()] == [("母", "admin")]
    # the same code never works twice
    other = make_client(config)
    page = other.get("/signin")
    again = other.post("/signin", data={"code": code.group(1), "csrf": csrf_of(page.text)})
    assert again.status_code == 400
    # the admin invites a member from the settings page
    token = csrf_of(admin.get("/settings").text)
    invite = admin.post("/settings/invite", data={"csrf": token, "role": "member"})
    assert invite.status_code == 200, invite.text
    new_code = re.search(r'data-testid="invite-code">(\d{4} \d{4})<', invite.text)
    assert new_code, invite.text
    page = other.get("/signin")
    assert "ようこそ" not in page.text
    r = other.post("/signin", data={"code": new_code.group(1), "name": "父", "csrf": csrf_of(page.text)})
    assert r.status_code == 303
    assert [(u.name, u.role.value) for u in site.auth.users()] == [("母", "admin"), ("父", "member")]
    # a member cannot invite
    token = csrf_of(other.get("/settings").text)
    assert other.post("/settings/invite", data={"csrf": token, "role": "admin"}).status_code == 403


def test_codes_accept_what_people_type() -> None:
    assert normalise_code("1234 5678") == "12345678"
    assert normalise_code("１２３４－５６７８") == "12345678"  # full-width, as a Japanese keyboard types them
    assert normalise_code("12a34") == "1234"


def test_csrf_is_refused_without_the_token(config: Path) -> None:
    client = make_client(config)
    token = sign_in(client)
    # no token, a wrong token, a token of the sign-in page (before the session), from another site
    assert client.post("/signout").status_code == 403
    assert client.post("/signout", data={"csrf": "nope"}).status_code == 403
    assert client.post("/lang", data={"lang": "en"}).status_code == 403
    r = client.post("/signout", data={"csrf": token}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    # another session's token does not work either
    other = make_client(config)
    other_token = sign_in(other, "B")
    assert client.post("/signout", data={"csrf": other_token}).status_code == 403
    # the header (htmx) and the field both work
    assert client.post("/lang", data={"lang": "en", "next": "/"}, headers={"X-CSRF-Token": token}).status_code == 303
    assert client.post("/signout", data={"csrf": token}).status_code == 303
    assert client.get("/").status_code == 303  # signed out
    # the sign-in form itself needs the pre-session token
    fresh = make_client(config)
    code = site_of(fresh).auth.new_code()
    fresh.get("/signin")
    assert fresh.post("/signin", data={"code": code}).status_code == 403
    assert site_of(fresh).auth.open_codes() >= 1  # the refused post did not use the code


def test_brute_force_is_locked_out(config: Path) -> None:
    clock = Clock()
    client = make_client(config, now=clock)
    site = site_of(client)
    good = site.auth.new_code()
    page = client.get("/signin")
    token = csrf_of(page.text)
    wrong = "00000000" if good != "00000000" else "11111111"
    for i in range(5):
        r = client.post("/signin", data={"code": wrong, "csrf": token})
        assert r.status_code == 400, (i, r.text)
    # locked: even the right code is refused, without being looked at
    r = client.post("/signin", data={"code": good, "csrf": token})
    assert r.status_code == 429
    assert "15" in r.text
    assert site.auth.open_codes() == 1
    locked = client.get("/signin").text  # coming back later still says so, and the form is off
    assert "間違ったコードが多すぎます。15 分後" in locked and 'id="code"' in locked and "disabled" in locked
    clock.t += 14 * 60
    assert client.post("/signin", data={"code": good, "csrf": token}).status_code == 429
    clock.t += 61
    assert client.post("/signin", data={"code": good, "csrf": token}).status_code == 303


def test_many_addresses_together_lock_everyone_out(tmp_path: Path) -> None:
    clock = Clock()
    store = AuthStore(connect(tmp_path), max_failures=5, now=clock)
    good = store.new_code()
    # 4 wrong codes from each of 5 addresses: no address reaches its own limit, the LAN as a whole does
    for addr in range(5):
        for _ in range(4):
            with pytest.raises(AuthError) as err:
                store.redeem("99999999" if good != "99999999" else "88888888", f"192.0.2.{addr}")
            assert err.value.reason == "wrong_code"
    with pytest.raises(AuthError) as err:
        store.redeem(good, "192.0.2.200")
    assert err.value.reason == "locked"
    assert err.value.retry_after_s > 0
    clock.t += 15 * 60 + 1
    user, token = store.redeem(good, "192.0.2.200")
    assert user.is_admin and token


def test_sessions_expire_when_unused(tmp_path: Path) -> None:
    clock = Clock()
    config = write_config(tmp_path, extra='[web]\nsession_idle = "P1D"\n')
    client = make_client(config, now=clock)
    sign_in(client)
    clock.t += 23 * 3600
    assert client.get("/").status_code == 200
    clock.t += 23 * 3600  # the visit above reset the idle time
    assert client.get("/").status_code == 200
    clock.t += 86_400 + 1
    assert client.get("/").status_code == 303


def test_secure_cookie_and_headers_with_tls(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra='[web]\ntls = { cert = "/nonexistent.crt", key = "/nonexistent.key" }\n')
    client = make_client(config, base_url="https://testserver")
    page = client.get("/signin")
    assert "Secure" in page.headers["set-cookie"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    code = site_of(client).auth.new_code()
    r = client.post("/signin", data={"code": code, "csrf": csrf_of(page.text)})
    assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]


def test_language_is_japanese_first_and_english_is_remembered(config: Path) -> None:
    client = make_client(config)
    page = client.get("/signin")
    assert '<html lang="ja">' in page.text and "サインイン" in page.text
    r = client.post("/lang", data={"lang": "en", "next": "/signin", "csrf": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert "kyojo_lang=en" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    page = client.get("/signin")
    assert '<html lang="en">' in page.text and "Sign in" in page.text
    token = sign_in(client)
    assert '<html lang="en">' in client.get("/").text  # still English after signing in
    assert (
        client.post("/lang", data={"lang": "ja", "next": "//evil.example/", "csrf": token}).headers["location"] == "/"
    )
    assert '<html lang="ja">' in client.get("/").text


# -- where it listens ------------------------------------------------------------------------------------------
IFACES = {"lo": ["127.0.0.1", "::1"], "eth0": ["203.0.113.7"], "wlan0": ["192.168.1.20"], "br-lan": ["10.0.0.1"]}


def test_default_listens_on_the_lan_not_the_uplink() -> None:
    web = WebSection()
    assert choose_addresses(web, IFACES, {"eth0"}) == ["127.0.0.1", "192.168.1.20", "10.0.0.1"]
    assert choose_addresses(WebSection(uplink=["wlan0"]), IFACES, {"eth0"}) == ["127.0.0.1", "203.0.113.7", "10.0.0.1"]
    assert choose_addresses(WebSection(interfaces=["br-lan"]), IFACES, {"eth0"}) == ["127.0.0.1", "10.0.0.1"]
    assert choose_addresses(WebSection(addresses=["192.168.1.20"], loopback=False), IFACES, {"eth0"}) == [
        "192.168.1.20"
    ]
    with pytest.raises(ListenError, match="uplink"):
        choose_addresses(WebSection(interfaces=["eth0"]), IFACES, {"eth0"})
    with pytest.raises(ListenError, match="uplink"):
        choose_addresses(WebSection(addresses=["203.0.113.7"]), IFACES, {"eth0"})
    with pytest.raises(ListenError, match="no interface"):
        choose_addresses(WebSection(interfaces=["wlan9"]), IFACES, {"eth0"})


def test_this_machines_uplink_is_left_out() -> None:
    uplinks = default_route_interfaces()
    ifaces = local_interfaces()
    chosen = listen_addresses(WebSection())
    assert "127.0.0.1" in chosen
    for name in uplinks:
        for addr in ifaces.get(name, []):
            assert addr not in chosen, (name, addr, chosen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uplink_address() -> str | None:
    ifaces = local_interfaces()
    for name in sorted(default_route_interfaces()):
        for addr in ifaces.get(name, []):
            if ":" not in addr:
                return addr
    return None


def test_kyojo_web_serve_listens_on_loopback_and_not_on_the_uplink(config: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    kyojo = Path(sys.executable).with_name("kyojo")
    proc = subprocess.Popen(
        [str(kyojo), "web", "serve", "-c", str(config), "--port", str(port)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        urls = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("http"):
                urls = line.strip()
                break
        assert urls, f"no URL printed; exit {proc.poll()}"
        assert f"http://127.0.0.1:{port}/" in urls.split()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(4096).decode()
        assert head.startswith("HTTP/1.1 303") and "location: /signin" in head.lower()
        uplink = _uplink_address()
        if uplink is not None:
            assert uplink not in urls
            with pytest.raises(ConnectionRefusedError), socket.create_connection((uplink, port), timeout=2):
                pass
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode in (0, -15)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (standing in for the gateway's own identity certificate) and its key."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "home-001")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp / "identity.crt", tmp / "identity.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return crt, pem


def test_kyojo_web_serve_speaks_tls_with_the_configured_certificate(tmp_path: Path) -> None:
    import ssl

    crt, pem = _self_signed(tmp_path)
    port = _free_port()
    config = write_config(tmp_path, extra=f'[web]\nport = {port}\ntls = {{ cert = "{crt}", key = "{pem}" }}\n')
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    kyojo = Path(sys.executable).with_name("kyojo")
    proc = subprocess.Popen(
        [str(kyojo), "web", "serve", "-c", str(config), "--host", "127.0.0.1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and not line.startswith("http"):
            line = proc.stderr.readline()
        assert line.strip() == f"https://127.0.0.1:{port}/", line
        ctx = ssl.create_default_context(cafile=str(crt))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            s.sendall(b"GET /signin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(8192).decode()
        assert head.startswith("HTTP/1.1 200")
        assert "Secure" in head and "SameSite=Strict" in head
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert not plain.recv(100).startswith(b"HTTP/1.1 3")  # no plain-HTTP page on the TLS port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_config_rejects_bad_web_settings(tmp_path: Path) -> None:
    from edge_agent.config import ConfigError

    with pytest.raises(ConfigError, match="not an IP address"):
        load_config(write_config(tmp_path, extra='[web]\naddresses = ["lan"]\n'))
    with pytest.raises(ConfigError, match="extra"):
        load_config(write_config(tmp_path, extra="[web]\nlisten = 1\n"))
