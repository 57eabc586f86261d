"""Helpers for the web app's in-process tests (Starlette's TestClient against the real app and databases)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from edge_agent.web.app import create_app
from edge_agent.web.site import Site

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


def write_config(tmp_path: Path, *, gateway: str = "home-001", extra: str = "") -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[gateway]\nid = "{gateway}"\ndata_dir = "{data}"\n\n'
        '[[devices]]\nkind = "ble"\nid = "home-001-p1-hr"\naddress = "C0:4B:00:00:01:01"\n'
        'profile = "heart_rate"\nsubject = "p1"\nbackend = "virtual"\n\n' + extra,
        encoding="utf-8",
    )
    return path


def csrf_of(html: str) -> str:
    found = CSRF_META.search(html)
    assert found, "no csrf meta tag in the page"
    return found.group(1)


def site_of(client: TestClient) -> Site:
    site: Site = client.app.state.site  # type: ignore[attr-defined]
    return site


def make_client(config: Path, *, base_url: str = "http://testserver", **kw: Any) -> TestClient:
    return TestClient(create_app(config, **kw), base_url=base_url, follow_redirects=False)


def sign_in(client: TestClient, name: str = "Hanako", code: str | None = None) -> str:
    """Sign in with a fresh console code; returns the session's CSRF token."""
    if code is None:
        code = site_of(client).auth.new_code()
    page = client.get("/signin")
    assert page.status_code == 200, page.text
    r = client.post("/signin", data={"code": code, "name": name, "csrf": csrf_of(page.text), "next": "/"})
    assert r.status_code == 303, r.text
    home = client.get("/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)
