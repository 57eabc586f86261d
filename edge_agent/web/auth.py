"""Sign-in for the household page: one-time pairing codes, sessions, CSRF, and lockout of code guessing.

- A pairing code is 8 digits (``1234 5678``), single use, valid for ``[web] code_ttl``. ``kyojo web pair-code``
  prints one at the gateway (the installer's sheet); the first person to enter one becomes the household's
  admin, who can invite the others with new codes from the settings page. Only a SHA-256 of each code is kept.
- A session is a random 256-bit token in a cookie (``HttpOnly; SameSite=Strict``; ``Secure`` over TLS); the
  database keeps only its hash, the user, and the session's CSRF token. It lasts ``[web] session_idle`` unused.
- Every state-changing request carries the CSRF token (hidden ``csrf`` field, or ``X-CSRF-Token`` from htmx);
  before sign-in the sign-in form is protected by a double-submit cookie. See :mod:`edge_agent.web.guard`.
- Wrong codes are counted per client address: ``max_failures`` within ``lockout`` locks that address out for
  ``lockout``, and four times as many from all addresses together lock code entry for everyone, so guessing
  8 digits (10^8) from a whole LAN takes centuries. A locked-out attempt is refused without looking at the code.

All of it lives in its own database, ``<data_dir>/web.sqlite3`` (0600), beside the agent's: the web process
never writes the agent's raw store except through the consent and alert code the CLI also uses.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from edge_agent.db import _private, tx
from kyojo.contract.vocab import KyojoError

CODE_DIGITS = 8
#: failures from all addresses together that lock code entry for everyone, as a multiple of ``max_failures``
GLOBAL_FACTOR = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS users(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, created INTEGER NOT NULL,
    invited_by INTEGER);
CREATE TABLE IF NOT EXISTS codes(
    hash TEXT PRIMARY KEY, role TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL,
    made_by TEXT NOT NULL, used_at INTEGER, used_by INTEGER);
CREATE TABLE IF NOT EXISTS sessions(
    hash TEXT PRIMARY KEY, user INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE, csrf TEXT NOT NULL,
    created INTEGER NOT NULL, seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures(addr TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS failures_at ON failures(at);
"""


class AuthError(KyojoError, ValueError):
    """A sign-in that did not succeed; ``reason`` is stable (``wrong_code``, ``locked``, ``expired``, ...)."""

    def __init__(self, reason: str, retry_after_s: int = 0) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(reason)


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    token_hash: str


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalise_code(text: str) -> str:
    """What a person typed -> the code's digits: full-width digits (０-９) count, spaces and dashes do not."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in folded if ch.isdigit() and ch.isascii())


def format_code(code: str) -> str:
    """``12345678`` -> ``1234 5678`` (easier to read aloud and to type)."""
    return f"{code[:4]} {code[4:]}"


def connect(data_dir: Path) -> sqlite3.Connection:
    """The web app's own database (created 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "web.sqlite3"
    _private(path)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    from edge_agent.web import household

    conn.executescript(household.SCHEMA)
    return conn


class AuthStore:
    """Pairing codes, users, sessions and failures on one web database."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        code_ttl: timedelta = timedelta(days=7),
        session_idle: timedelta = timedelta(days=90),
        max_failures: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        now: Callable[[], float] = time.time,
    ) -> None:
        self.conn = conn
        self.code_ttl_ms = int(code_ttl.total_seconds() * 1000)
        self.idle_ms = int(session_idle.total_seconds() * 1000)
        self.max_failures = max_failures
        self.lockout_ms = int(lockout.total_seconds() * 1000)
        self._now = now

    def now_ms(self) -> int:
        return int(self._now() * 1000)

    # -- codes -----------------------------------------------------------------------------------------------
    def new_code(self, *, role: Role | None = None, made_by: str = "console") -> str:
        """A fresh one-time code (digits only). Without ``role``: admin while the home has no admin yet, else
        member. Codes made at the console stay admin codes (whoever holds the gateway is trusted)."""
        if role is None:
            role = Role.ADMIN if made_by == "console" or not self.has_admin() else Role.MEMBER
        now = self.now_ms()
        while True:
            code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
            try:
                with tx(self.conn):
                    self.conn.execute(
                        "INSERT INTO codes(hash, role, created, expires, made_by) VALUES(?, ?, ?, ?, ?)",
                        (_digest(code), role.value, now, now + self.code_ttl_ms, made_by),
                    )
                return code
            except sqlite3.IntegrityError:  # the same 8 digits again: draw another
                continue

    def has_admin(self) -> bool:
        return self.conn.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").fetchone() is not None

    def open_codes(self) -> int:
        now = self.now_ms()
        return int(
            self.conn.execute("SELECT count(*) FROM codes WHERE used_at IS NULL AND expires > ?", (now,)).fetchone()[0]
        )

    # -- lockout ---------------------------------------------------------------------------------------------
    def locked_for(self, addr: str) -> int:
        """Seconds until ``addr`` may try a code again (0: it may now)."""
        now = self.now_ms()
        since = now - self.lockout_ms
        mine = self.conn.execute(
            "SELECT count(*), max(at) FROM failures WHERE addr = ? AND at > ?", (addr, since)
        ).fetchone()
        every = self.conn.execute("SELECT count(*), max(at) FROM failures WHERE at > ?", (since,)).fetchone()
        until = 0
        if int(mine[0]) >= self.max_failures:
            until = max(until, int(mine[1]) + self.lockout_ms)
        if int(every[0]) >= self.max_failures * GLOBAL_FACTOR:
            until = max(until, int(every[1]) + self.lockout_ms)
        return max(0, -(-(until - now) // 1000))

    def failures(self, addr: str) -> int:
        since = self.now_ms() - self.lockout_ms
        return int(
            self.conn.execute("SELECT count(*) FROM failures WHERE addr = ? AND at > ?", (addr, since)).fetchone()[0]
        )

    # -- sign-in ---------------------------------------------------------------------------------------------
    def redeem(self, code_text: str, addr: str, name: str = "") -> tuple[User, str]:
        """Exchange a pairing code for a new user and session: returns (user, session token).

        Raises :class:`AuthError` ``locked`` (with ``retry_after_s``) before looking at the code when ``addr``
        or the whole LAN is locked out, and ``wrong_code`` (counted) for a code that is not open."""
        wait = self.locked_for(addr)
        if wait:
            raise AuthError("locked", wait)
        code = normalise_code(code_text)
        now = self.now_ms()
        with tx(self.conn):
            row = None
            if len(code) == CODE_DIGITS:
                row = self.conn.execute(
                    "SELECT hash, role, expires FROM codes WHERE hash = ? AND used_at IS NULL", (_digest(code),)
                ).fetchone()
            if row is None or int(row[2]) <= now:
                self.conn.execute("INSERT INTO failures(addr, at) VALUES(?, ?)", (addr, now))
                self.conn.execute("DELETE FROM failures WHERE at < ?", (now - 10 * self.lockout_ms,))
                reason = "expired" if row is not None else "wrong_code"
                failed = AuthError(reason, 0)
            else:
                first = not self.has_admin()
                role = Role.ADMIN if first else Role(str(row[1]))
                clean = " ".join(name.split())[:40]
                count = int(self.conn.execute("SELECT count(*) FROM users").fetchone()[0])
                cur = self.conn.execute(
                    "INSERT INTO users(name, role, created) VALUES(?, ?, ?)",
                    (clean or f"#{count + 1}", role.value, now),
                )
                uid = int(cur.lastrowid or 0)
                self.conn.execute("UPDATE codes SET used_at = ?, used_by = ? WHERE hash = ?", (now, uid, row[0]))
                self.conn.execute("DELETE FROM failures WHERE addr = ?", (addr,))
                token = self._new_session(uid, now)
                return User(uid, clean or f"#{count + 1}", role), token
        raise failed

    def _new_session(self, uid: int, now: int) -> str:
        token = secrets.token_urlsafe(32)
        self.conn.execute(
            "INSERT INTO sessions(hash, user, csrf, created, seen) VALUES(?, ?, ?, ?, ?)",
            (_digest(token), uid, secrets.token_urlsafe(32), now, now),
        )
        return token

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie value (its idle time is reset), or None."""
        if not token or len(token) > 100:
            return None
        h = _digest(token)
        now = self.now_ms()
        row = self.conn.execute(
            "SELECT s.csrf, s.seen, u.id, u.name, u.role FROM sessions s JOIN users u ON u.id = s.user "
            "WHERE s.hash = ?",
            (h,),
        ).fetchone()
        if row is None:
            return None
        csrf, seen, uid, name, role = row
        if int(seen) + self.idle_ms <= now:
            self.conn.execute("DELETE FROM sessions WHERE hash = ?", (h,))
            return None
        if now - int(seen) > 60_000:  # write at most once a minute per session
            self.conn.execute("UPDATE sessions SET seen = ? WHERE hash = ?", (now, h))
        return Session(User(int(uid), str(name), Role(str(role))), str(csrf), h)

    def sign_out(self, token_hash: str) -> None:
        self.conn.execute("DELETE FROM sessions WHERE hash = ?", (token_hash,))

    # -- the household's users -------------------------------------------------------------------------------
    def users(self) -> list[User]:
        return [
            User(int(i), str(n), Role(str(r)))
            for i, n, r in self.conn.execute("SELECT id, name, role FROM users ORDER BY id")
        ]

    def remove_user(self, uid: int, *, by: User) -> None:
        """An admin removes a user (and their sessions); the last admin cannot be removed."""
        if not by.is_admin:
            raise AuthError("not_admin")
        with tx(self.conn):
            admins = [u for u in self.users() if u.is_admin]
            if len(admins) == 1 and admins[0].id == uid:
                raise AuthError("last_admin")
            self.conn.execute("DELETE FROM sessions WHERE user = ?", (uid,))
            self.conn.execute("DELETE FROM users WHERE id = ?", (uid,))


def same_token(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())
