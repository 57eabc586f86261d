"""Alembic's environment for the trading ledger: plain SQL migrations, run on a psycopg 3 connection."""

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def _run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no sqlalchemy.url: run the migrations through cloud_ingest.ledger.migrate")
    if context.is_offline_mode():  # `alembic upgrade head --sql`: the SQL for a DBA to review and run
        context.configure(url=url, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


_run()
