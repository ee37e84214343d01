"""Recall: a full-text index over messages.text, so an agent can search a space's whole history.

Revision ID: 0010
Revises: 0009
Create Date: 2027-02-10

SQLite: an FTS5 table `messages_fts` with external content (it stores only the index; the
text stays in `messages`), kept in step by AFTER INSERT / DELETE / UPDATE triggers and
filled from the rows already there ('rebuild'). `unicode61 remove_diacritics 2` folds
case and accents, so "Cafe" finds "café".

PostgreSQL: a stored generated column `text_search` = to_tsvector('simple', text) with a
GIN index. 'simple' (no stemming, no stop words) because a space's language is unknown and
a chat mixes several. Only the first 100,000 characters are indexed: a tsvector is limited
to 1 MB, and an INSERT of a larger one would fail, losing the message.

Neither object is in the models (mercury/storage/models.py): recall reads them with SQL of
its own (mercury/storage/recall.py, whose `include_name` keeps them out of schema
comparisons). A later migration that rebuilds `messages` in SQLite batch mode (copy, drop,
rename) drops these triggers with the old table: it must create them again (TRIGGERS).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The FTS5 'delete' command must be given exactly the values that were indexed; the
# triggers pass the old row's, so the index never drifts from the table.
TRIGGERS = (
    """CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    # Only a change of the indexed values re-indexes (not e.g. conversation_id set to NULL).
    """CREATE TRIGGER messages_fts_au AFTER UPDATE OF id, text ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
    END""",
)
TRIGGER_NAMES = ("messages_fts_ai", "messages_fts_ad", "messages_fts_au")

PG_INDEXED_CHARS = 100_000


def _sqlite() -> bool:
    # The context's dialect, not op.get_bind(): works in offline (--sql) mode as well.
    return op.get_context().dialect.name == "sqlite"


def upgrade() -> None:
    if _sqlite():
        op.execute(
            "CREATE VIRTUAL TABLE messages_fts USING fts5("
            "text, content='messages', content_rowid='id', "
            "tokenize='unicode61 remove_diacritics 2')"
        )
        for trigger in TRIGGERS:
            op.execute(trigger)
        op.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    else:
        op.execute(
            "ALTER TABLE messages ADD COLUMN text_search tsvector GENERATED ALWAYS AS "
            f"(to_tsvector('simple'::regconfig, left(text, {PG_INDEXED_CHARS}))) STORED"
        )
        op.execute("CREATE INDEX ix_messages_text_search ON messages USING gin (text_search)")


def downgrade() -> None:
    if _sqlite():
        for name in TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    else:
        op.execute("DROP INDEX IF EXISTS ix_messages_text_search")
        op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS text_search")
