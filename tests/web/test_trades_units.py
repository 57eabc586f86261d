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
