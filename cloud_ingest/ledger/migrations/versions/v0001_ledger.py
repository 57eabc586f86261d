"""The trading ledger: entries, the head row every append locks, and the index tables rebuilt from entries.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_GENESIS_PREV = "0" * 64

UPGRADE = [
    """CREATE TABLE ledger_entries (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        kind text NOT NULL,
        prev text NOT NULL,
        body jsonb NOT NULL,
        sig text,
        hash text NOT NULL UNIQUE,
        appended_at timestamptz NOT NULL DEFAULT now()
    )""",
    # append-only for the application: an UPDATE or DELETE is an error (an operator with superuser rights can still
    # disable this; `kyojo ledger verify` is what catches that)
    """CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP;
    END $$""",
    """CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
        FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only()""",
    """CREATE TABLE ledger_head (
        id smallint PRIMARY KEY CHECK (id = 1),
        seq bigint NOT NULL,
        hash text NOT NULL
    )""",
    f"INSERT INTO ledger_head (id, seq, hash) VALUES (1, 0, '{_GENESIS_PREV}')",  # noqa: S608 (a constant)
    """CREATE TABLE accounts (
        account text PRIMARY KEY,
        key text NOT NULL,
        consent text NOT NULL,
        joined_seq bigint NOT NULL REFERENCES ledger_entries (seq),
        left_seq bigint REFERENCES ledger_entries (seq)
    )""",
    """CREATE TABLE orders (
        seq bigint PRIMARY KEY REFERENCES ledger_entries (seq),
        account text NOT NULL REFERENCES accounts (account),
        kind text NOT NULL CHECK (kind IN ('offer', 'bid')),
        order_id text NOT NULL,
        slot bigint NOT NULL,
        wh bigint NOT NULL CHECK (wh > 0),
        price integer NOT NULL,
        UNIQUE (account, kind, order_id)
    )""",
    "CREATE INDEX orders_slot ON orders (slot)",
    """CREATE TABLE meter_reports (
        seq bigint PRIMARY KEY REFERENCES ledger_entries (seq),
        account text NOT NULL REFERENCES accounts (account),
        slot bigint NOT NULL,
        direction text NOT NULL CHECK (direction IN ('export', 'import')),
        wh bigint NOT NULL CHECK (wh >= 0),
        UNIQUE (account, slot, direction)
    )""",
    """CREATE TABLE clearings (
        slot bigint PRIMARY KEY,
        seq bigint NOT NULL REFERENCES ledger_entries (seq),
        price integer
    )""",
    """CREATE TABLE settlements (
        slot bigint PRIMARY KEY REFERENCES clearings (slot),
        seq bigint NOT NULL REFERENCES ledger_entries (seq)
    )""",
    """CREATE TABLE balances (
        account text PRIMARY KEY,
        wh bigint NOT NULL
    )""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for table in ("balances", "settlements", "clearings", "meter_reports", "orders", "accounts", "ledger_head"):
        op.execute(f"DROP TABLE {table}")
    op.execute("DROP TABLE ledger_entries")
    op.execute("DROP FUNCTION ledger_entries_append_only()")
