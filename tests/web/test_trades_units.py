"""The trades page's pieces that need no service: the ``[trading]`` config and the words for kWh and slots."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.web.pages.trades import kwh, slot_words
from tests.ledgerkit import T0
from tests.web.appkit import write_config


def test_trading_config_is_optional_and_validated(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path)).trading.ledger_url is None
    cfg = load_config(
        write_config(
            tmp_path,
            extra='[trading]\nledger_url = "https://ledger.city.example/"\ntimeout = 2\ncity_ca = "ca.crt"\n',
        )
    )
    assert cfg.trading.ledger_url == "https://ledger.city.example"
    assert cfg.trading.timeout == timedelta(seconds=2)
    assert cfg.city_ca == (tmp_path / "ca.crt").resolve()  # relative to the config file, like [safety] city_ca
    assert load_config(write_config(tmp_path, extra='[trading]\nledger_url = "http://127.0.0.1:8099"\n'))
    for bad, why in [
        ('ledger_url = "http://ledger.city.example"', "must use https"),
        ('ledger_url = "ftp://ledger.city.example"', "must be an https:// URL"),
        ('ledger_url = "https://ledger.city.example/?x=1"', "no query"),
        ('ledger_url = "https://ledger.city.example:99999"', "not a URL"),
        ('ledger_url = "https://ledger.city.example"\ntimeout = 600', "less than or equal"),
        ('ledger = "https://ledger.city.example"', "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(write_config(tmp_path, extra=f"[trading]\n{bad}\n"))


def test_kwh_and_slot_words() -> None:
    assert [kwh(w) for w in (0, 900, 1000, 1800, 2500, 1234)] == ["0", "0.9", "1", "1.8", "2.5", "1.234"]
    assert slot_words(int(T0.timestamp())) == "2026-06-01 09:00–09:30"  # Japan time, whatever the gateway's zone


def test_a_garbled_ledger_answer_is_words_not_a_crash() -> None:
    """Whatever the city sends inside well-formed entries, the page says something and flags it."""
    from edge_agent.ledger_check import Checked, LedgerAnswer, LedgerEntry, check
    from edge_agent.web.pages.trades import _ledger_rows, entry_words
    from kyojo.contract.ledger import entry_hash
    from kyojo.i18n import translations

    _ = translations("en").gettext
    bodies = [
        ("settle", {"slot": 1800, "transfers": [["delivery", "me", 900], ["x", "me", 100]]}),
        ("settle", {"slot": "soon", "transfers": "all of them"}),
        ("match", {"slot": 10**30, "pairs": [{"seller": "me", "wh": "lots"}]}),
        ("offer", {"kind": "offer", "account": "me", "wh": -1, "id": ["not", "an", "id"]}),
    ]

    def seal(seq: int, kind: str, body: dict[str, object]) -> str:
        try:
            return entry_hash(seq, kind, "0" * 64, body, None)
        except TypeError:  # a number beyond 64 bits has no canonical form: no seal can match
            return "f" * 64

    entries = [LedgerEntry(i + 1, k, "0" * 64, b, None, seal(i + 1, k, b)) for i, (k, b) in enumerate(bodies)]
    assert entry_words(entries[0], "me", _) == ("Settled 1970-01-01 09:30–10:00: 0.1 kWh delivered as tokens", 1000)
    answer = LedgerAnswer("me", 1000, "4:x", entries, [])
    key = "A" * 43 + "="
    checked = check(answer, [], trading_key=key, ca=None, now_ms=0)
    assert [(f.cause, f.seq) for f in checked.findings] == [("seal", 3), ("not_yours", 4)]
    rows = _ledger_rows(answer, Checked(findings=checked.findings), _)
    assert [r["seq"] for r in rows] == [4, 3, 2, 1]
    assert rows[1]["what"].startswith("An entry the gateway could not read") and rows[0]["css"] == "bad"
