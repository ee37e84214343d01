"""Recall: full-text search over a space's whole message history, best matches first.

A run's prompt holds only the last messages of its space; anything older is reachable
through this search (host API `GET /spaces/{id}/recall`, `mercury-ctl recall`). The index
is migration 0010's: SQLite FTS5 (`messages_fts`, external content, kept in step by
triggers) or a PostgreSQL `tsvector` column with a GIN index (`messages.text_search`).
Neither is in the models, so the SQL here is written out per dialect.

The user's query is plain words, never search syntax: `query_words` keeps only runs of
letters and digits, and every word reaches the database as a bound value (FTS5: a quoted
string; PostgreSQL: `plainto_tsquery` of the one word). Words are ANDed; when no message
has all of them, any of them will do (OR). Quotes, `*`, `NEAR`, `AND`/`OR`/`NOT` and the
like are therefore words or nothing, and a query with no word finds nothing (it never
matches everything).

Only chat messages (user, assistant, ambient) are found: a refused message was turned
away and is not part of the conversation. Messages before a /reset are found too: /reset
starts a fresh context, it does not delete the history.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, String, bindparam, text
from sqlalchemy.sql.elements import TextClause

from mercury.storage.models import MessageRole, UTCDateTime
from mercury.storage.session import Store, tx

SEARCHABLE_ROLES: tuple[MessageRole, ...] = (
    MessageRole.USER,
    MessageRole.ASSISTANT,
    MessageRole.AMBIENT,
)
MAX_LIMIT = 50
MAX_QUERY_WORDS = 16  # more words than this is a paragraph, not a search
MAX_WORD_CHARS = 64
SNIPPET_CHARS = 300
MARK_OPEN, MARK_CLOSE = "«", "»"
ELLIPSIS = "…"

# The schema objects of migration 0010 that the models do not describe.
SQLITE_FTS_TABLE = "messages_fts"
SQLITE_FTS_TABLES = frozenset(
    {SQLITE_FTS_TABLE, *(f"{SQLITE_FTS_TABLE}_{s}" for s in ("data", "idx", "docsize", "config"))}
)
PG_SEARCH_COLUMN = "text_search"
PG_SEARCH_INDEX = "ix_messages_text_search"
PG_INDEXED_CHARS = 100_000  # as in migration 0010

# Runs of letters and digits: what FTS5's unicode61 tokenizer keeps as tokens (it splits
# on "_" and punctuation alike), so a word never carries search syntax.
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class RecallHit:
    """One message that matched: `snippet` is the matching part (at most SNIPPET_CHARS,
    the words found marked «like this»); `rank` is higher for a better match."""

    message_id: int
    created_at: datetime
    author_name: str | None
    role: MessageRole
    snippet: str
    rank: float


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For Alembic's `include_name`: False for the search index's own objects.

    Schema comparisons (autogenerate, the test that migrations match the models) would
    otherwise want to drop what migration 0010 made and the models leave out on purpose."""
    if type_ == "table":
        return name not in SQLITE_FTS_TABLES
    if type_ == "column":
        return not (name == PG_SEARCH_COLUMN and parent_names.get("table_name") == "messages")
    if type_ == "index":
        return name != PG_SEARCH_INDEX
    return True


def query_words(query: str) -> list[str]:
    """The words of a plain-text query: letters and digits only, each once, in order,
    at most MAX_QUERY_WORDS of at most MAX_WORD_CHARS characters."""
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(unicodedata.normalize("NFC", query)):
        word = word[:MAX_WORD_CHARS]
        if word.casefold() in seen:
            continue
        seen.add(word.casefold())
        words.append(word)
        if len(words) == MAX_QUERY_WORDS:
            break
    return words


def fts5_query(words: Sequence[str], *, any_word: bool = False) -> str:
    """An FTS5 MATCH expression that looks for `words` literally: each one a quoted string
    (so AND, NEAR, *, ^ or a column name are plain text), joined by AND or OR."""
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    return (" OR " if any_word else " AND ").join(quoted)


def clip_snippet(snippet: str, limit: int = SNIPPET_CHARS) -> str:
    """`snippet` on one line, at most `limit` characters, keeping the first marked word."""
    flat = " ".join(snippet.split())
    if len(flat) <= limit:
        return flat
    first = flat.find(MARK_OPEN)
    start = max(0, first - limit // 4) if first > limit // 2 else 0
    head = ELLIPSIS if start else ""
    body = flat[start : start + limit - len(head) - 2]
    if body.count(MARK_OPEN) > body.count(MARK_CLOSE):
        body += MARK_CLOSE
    return (head + body.rstrip() + ELLIPSIS)[:limit]


async def search_messages(
    store: Store,
    space_id: str,
    query: str,
    *,
    limit: int = 10,
    before: datetime | None = None,
) -> list[RecallHit]:
    """The messages of `space_id` that best match the words of `query`, best first.

    All words must match; if no message has them all, messages with any of them are
    returned. `before`: only messages created before this time. `limit` is clamped to
    1..MAX_LIMIT. A query with no letters or digits finds nothing.
    """
    words = query_words(query)
    if not words:
        return []
    limit = max(1, min(int(limit), MAX_LIMIT))
    async with tx(store) as s:
        postgres = s.get_bind().dialect.name == "postgresql"
        build = _postgres_search if postgres else _sqlite_search
        params: dict[str, Any] = {
            "space_id": space_id,
            "roles": [r.value for r in SEARCHABLE_ROLES],
            "limit": limit,
        }
        if before is not None:
            params["before"] = before
        for any_word in (False, True) if len(words) > 1 else (False,):
            stmt, extra = build(words, any_word=any_word, before=before is not None)
            rows = (await s.execute(stmt, {**params, **extra})).all()
            if rows:
                return [_hit(row, postgres) for row in rows]
    return []


def _hit(row: Any, postgres: bool) -> RecallHit:
    # bm25() is lower for a better match, ts_rank() higher: one direction for callers.
    score = float(row.score)
    return RecallHit(
        message_id=int(row.id),
        created_at=row.created_at,
        author_name=row.author_name,
        role=MessageRole(row.role),
        snippet=clip_snippet(row.snippet or ""),
        rank=score if postgres else -score,
    )


def _typed(sql: str, *, before: bool) -> TextClause:
    params = [bindparam("roles", expanding=True)]
    if before:
        params.append(bindparam("before", type_=UTCDateTime()))
    return (
        text(sql)
        .bindparams(*params)
        .columns(
            id=Integer(),
            created_at=UTCDateTime(),
            author_name=String(),
            role=String(),
            snippet=String(),
            score=Float(),
        )
    )


# The best `limit` ids are picked first and only they get a snippet: snippet() and
# ts_headline() read the whole text, too costly for every match of a common word.
# CROSS JOIN makes SQLite drive the query from the full-text index, not the space's rows.
_SQLITE_SEARCH = """
WITH best AS (
    SELECT m.id AS id, bm25(messages_fts) AS score
    FROM messages_fts CROSS JOIN messages AS m ON m.id = messages_fts.rowid
    WHERE messages_fts MATCH :match AND m.space_id = :space_id AND m.role IN :roles {before}
    ORDER BY score, m.id DESC
    LIMIT :limit
)
SELECT m.id AS id, m.created_at AS created_at, m.author_name AS author_name, m.role AS role,
       snippet(messages_fts, 0, '«', '»', '…', 32) AS snippet, best.score AS score
FROM best CROSS JOIN messages_fts CROSS JOIN messages AS m ON m.id = best.id
WHERE messages_fts MATCH :match AND messages_fts.rowid = best.id
ORDER BY best.score, m.id DESC
"""


def _sqlite_search(
    words: Sequence[str], *, any_word: bool, before: bool
) -> tuple[TextClause, dict[str, Any]]:
    where_before = "AND m.created_at < :before" if before else ""
    sql = _SQLITE_SEARCH.format(before=where_before)
    return _typed(sql, before=before), {"match": fts5_query(words, any_word=any_word)}


_POSTGRES_SEARCH = """
SELECT best.id, best.created_at, best.author_name, best.role,
       ts_headline('simple', left(best.text, {chars}), best.q, :headline) AS snippet,
       best.score
FROM (
    SELECT m.id, m.created_at, m.author_name, m.role, m.text, sq.q,
           ts_rank(m.text_search, sq.q, 1) AS score
    FROM messages AS m, (SELECT {tsquery} AS q) AS sq
    WHERE m.space_id = :space_id AND m.text_search @@ sq.q AND m.role IN :roles {before}
    ORDER BY score DESC, m.id DESC
    LIMIT :limit
) AS best
ORDER BY best.score DESC, best.id DESC
"""
_HEADLINE = (
    f"StartSel={MARK_OPEN}, StopSel={MARK_CLOSE}, MaxWords=32, MinWords=12, ShortWord=0, "
    f'MaxFragments=2, FragmentDelimiter=" {ELLIPSIS} "'
)


def _postgres_search(
    words: Sequence[str], *, any_word: bool, before: bool
) -> tuple[TextClause, dict[str, Any]]:
    # One plainto_tsquery per word, each a bound value: PostgreSQL parses the word, the
    # user's text never becomes tsquery syntax.
    join = " || " if any_word else " && "
    tsquery = join.join(f"plainto_tsquery('simple', :w{i})" for i in range(len(words)))
    where_before = "AND m.created_at < :before" if before else ""
    sql = _POSTGRES_SEARCH.format(chars=PG_INDEXED_CHARS, tsquery=tsquery, before=where_before)
    extra: dict[str, Any] = {f"w{i}": w for i, w in enumerate(words)}
    extra["headline"] = _HEADLINE
    return _typed(sql, before=before), extra


__all__ = ["MAX_LIMIT", "SEARCHABLE_ROLES", "RecallHit", "query_words", "search_messages"]
