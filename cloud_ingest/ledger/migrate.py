"""Bring a ledger database to the newest schema with Alembic (``kyojo ledger migrate``; the store does it too)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def sqlalchemy_url(url: str) -> str:
    """``postgresql://...`` (what psycopg and ``kyojo ledger --db`` take) as SQLAlchemy's psycopg 3 URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    raise ValueError(f"not a PostgreSQL URL: {url!r} (postgresql://user@host:port/dbname)")


def upgrade(url: str, revision: str = "head") -> None:
    """Run every migration up to ``revision`` on the database at ``url`` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    command.upgrade(cfg, revision)
