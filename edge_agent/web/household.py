"""The people of the home and whom to notify: names for the ids devices and consents use, and contacts.

Devices, consents and alerts name a person by an id (``p1``); the household gives each a name here
("お父さん"). People come from the gateway config (each device's ``subject``), from consents, from the raw store's
series, and from this table; a person added here gets the next free ``pN``. Stored in the web database.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from edge_agent.config import AgentConfig
from edge_agent.db import tx
from kyojo.contract.vocab import KyojoError
from kyojo.contract.wire import valid_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS people(id TEXT PRIMARY KEY, name TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS contacts(
    id INTEGER PRIMARY KEY, person TEXT, name TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,
    created INTEGER NOT NULL);
"""

CONTACT_KINDS = ("phone", "email")
_PHONE = re.compile(r"^\+?[0-9][0-9 \-()]{5,20}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{2,}$")


def N_(text: str) -> str:
    """Marks a message for the catalogs; the page translates the error's text."""
    return text


class HouseholdError(KyojoError, ValueError):
    """A name, id or contact the household page cannot take."""


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str  # the household's name for them ("" = none given yet)

    @property
    def label(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    person: str | None
    name: str
    kind: str
    value: str


def _clean(name: str, limit: int = 40) -> str:
    text = " ".join(name.split())
    if not text:
        raise HouseholdError(N_("a name is needed"))
    if len(text) > limit:
        raise HouseholdError(N_("the name is too long"))
    return text


def config_subjects(config: AgentConfig) -> set[str]:
    """People named by the gateway config's devices (``subject``), not the household id itself."""
    out = {str(getattr(d, "subject", "")) for d in config.devices}
    out.discard("")
    out.discard(config.gateway.id)
    return out


def people(web: sqlite3.Connection, config: AgentConfig, agent: sqlite3.Connection | None = None) -> list[Person]:
    """Everyone the home knows of, by id."""
    names = {str(i): str(n) for i, n in web.execute("SELECT id, name FROM people")}
    ids = set(names) | config_subjects(config)
    if agent is not None:
        ids |= {str(s) for (s,) in agent.execute("SELECT DISTINCT subject FROM consents")}
        ids |= {str(s) for (s,) in agent.execute("SELECT DISTINCT subject FROM series WHERE category = 'health'")}
    ids.discard(config.gateway.id)
    return [Person(i, names.get(i, "")) for i in sorted(ids, key=_natural)]


def _natural(text: str) -> tuple[str, int, str]:
    m = re.match(r"^([a-zA-Z_.-]*)(\d+)(.*)$", text)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else (text, 0, "")


def name_of(web: sqlite3.Connection, person: str) -> str:
    row = web.execute("SELECT name FROM people WHERE id = ?", (person,)).fetchone()
    return str(row[0]) if row else ""


def set_name(web: sqlite3.Connection, person: str, name: str) -> None:
    if not valid_id(person):
        raise HouseholdError(N_("unknown person"))
    text = _clean(name)
    web.execute(
        "INSERT INTO people(id, name, created) VALUES(?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name",
        (person, text, int(time.time() * 1000)),
    )


def add_person(web: sqlite3.Connection, config: AgentConfig, name: str, agent: sqlite3.Connection | None) -> Person:
    """A new person with the next free ``pN`` id."""
    text = _clean(name)
    with tx(web):
        taken = {p.id for p in people(web, config, agent)}
        n = 1
        while f"p{n}" in taken:
            n += 1
        web.execute("INSERT INTO people(id, name, created) VALUES(?, ?, ?)", (f"p{n}", text, int(time.time() * 1000)))
    return Person(f"p{n}", text)


def contacts(web: sqlite3.Connection) -> list[Contact]:
    return [
        Contact(int(i), None if p is None else str(p), str(n), str(k), str(v))
        for i, p, n, k, v in web.execute("SELECT id, person, name, kind, value FROM contacts ORDER BY id")
    ]


def add_contact(web: sqlite3.Connection, name: str, kind: str, value: str, person: str | None) -> Contact:
    text = _clean(name)
    val = value.strip()
    if kind not in CONTACT_KINDS:
        raise HouseholdError(N_("choose phone or e-mail"))
    if kind == "phone" and not _PHONE.match(val):
        raise HouseholdError(N_("not a phone number"))
    if kind == "email" and not _EMAIL.match(val):
        raise HouseholdError(N_("not an e-mail address"))
    if person is not None and not valid_id(person):
        raise HouseholdError(N_("unknown person"))
    cur = web.execute(
        "INSERT INTO contacts(person, name, kind, value, created) VALUES(?, ?, ?, ?, ?)",
        (person, text, kind, val, int(time.time() * 1000)),
    )
    return Contact(int(cur.lastrowid or 0), person, text, kind, val)


def remove_contact(web: sqlite3.Connection, contact_id: int) -> None:
    web.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
