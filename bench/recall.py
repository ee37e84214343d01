"""Recall over 100,000 messages in one space, against a LIKE scan of the same table.

    .venv/bin/python bench/recall.py [-n 200] [--messages 100000] [--noise 20000]
                                     [--no-postgres] [--postgres-url URL]

Issue 16 asks recall (storage/recall.py, the full-text index of migration 0010) to answer
in under 50 ms at p50 over 100,000 messages in a space, on SQLite and on PostgreSQL. This
migrates a fresh database (SQLite in a temporary folder, then a fresh PostgreSQL database
on the MERCURY_TEST_POSTGRES_URL or scripts/ensure-postgres server, dropped afterwards) and
fills it: `--messages` in the measured space plus `--noise` spread over 20 other spaces,
roles as on a real instance (user, assistant replies longer, overheard chatter, a few
refused), words drawn Zipf-like from a vocabulary with function words on top and a long
tail of names, places and rare words. SQLite rows go in through executemany with the
index's triggers live (the real write path); PostgreSQL's through COPY (the generated
tsvector column is computed as they arrive), then VACUUM ANALYZE as autovacuum would.

The queries are what a person looking for a message types: 1-3 distinctive words (not
function words) of a random message of the space. Each is timed through
`search_messages` (the function behind the host API endpoint: query building, the
AND-then-OR fallback, snippets), and alternately the baseline: the same words as
`LIKE '%word%'` (ILIKE on PostgreSQL) over the space's messages, newest 10 first - the
search one would write without an index. "common words" times the 10 most frequent words
of the vocabulary alone (the slowest kind of query: every tenth message or more matches).
Prints p50 and p95 in ms and recall's ratio to the baseline; no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pgdb import create_pg_database, drop_pg_database, postgres_server
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from mercury.storage import Database, MessageRole, search_messages
from mercury.storage.migrate import upgrade
from mercury.storage.models import Message, Space

SPACE = "bench-space"
NOISE_SPACES = 20
CHUNK = 5000
TARGET_MS = 50.0


def words(line: str) -> list[str]:
    return line.split()


FUNCTION_WORDS = words(
    "the a to and of i you it is in that for on we this be with have not are at can so do "
    "but if my was will just what me your it's from all there as they get about an or "
    "know like one no up out when by think he she would how then now here more could our "
    "its also some them time well still did been has any see go need yes ok thanks"
)
CONTENT_WORDS = words(
    "meeting report invoice deadline project release deploy server database backup "
    "password wifi router laptop printer office kitchen lunch dinner coffee tea train "
    "flight hotel ticket booking trip holiday weekend monday tuesday wednesday thursday "
    "friday saturday sunday morning evening tomorrow yesterday week month year budget "
    "contract client customer supplier order delivery package address phone email "
    "calendar schedule agenda minutes notes draft review feedback design logo website "
    "app bug fix issue commit branch merge test build pipeline docker container cluster "
    "migration upgrade version license payment refund receipt tax salary bonus team "
    "manager intern hiring interview offer onboarding training workshop conference talk "
    "slides video call zoom recording photo picture document spreadsheet chart number "
    "price cost discount sale market launch campaign newsletter blog post article "
    "recipe pizza pasta salad cake birthday party gift wedding baby doctor dentist "
    "appointment gym run bike car parking garage key door window garden plant dog cat "
    "vet school homework exam grade teacher class book movie series music concert song "
    "game match score football tennis weather rain snow sun cold hot storm beach "
    "mountain lake river city harbour bridge museum restaurant bar menu table reservation"
)
NAMES = words(
    "Ana Ben Carla Dmitri Elif Farid Greta Hiro Ines Jonas Kofi Lena Mateo Nadia Omar "
    "Priya Quentin Rosa Sven Tomasz Uma Viktor Wen Ximena Yusuf Zoe"
)
PLACES = words(
    "Berlin Lisbon Paris Madrid Rome Vienna Prague Warsaw Oslo Helsinki Dublin London "
    "Zurich Munich Hamburg Lyon Porto Seville Athens Istanbul Cairo Nairobi Lagos Tokyo "
    "Osaka Seoul Taipei Sydney Toronto Montreal Boston Chicago Denver Austin Lima Quito"
)
SYLLABLES = words("ka lo mi ne ra tu be so vi da pe ri go fa lu ze chi mo ta ni")


def vocabulary(rng: random.Random, rare: int) -> list[str]:
    """Function words first, then content words, names and places, then a long tail."""
    tail: set[str] = set()
    while len(tail) < rare:
        tail.add("".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))))
    return list(dict.fromkeys(FUNCTION_WORDS + CONTENT_WORDS + NAMES + PLACES + sorted(tail)))


@dataclass
class Corpus:
    words: list[str]
    cum_weights: list[float]
    rng: random.Random

    @classmethod
    def make(cls, seed: int) -> Corpus:
        rng = random.Random(seed)
        words = vocabulary(rng, 20_000)
        # Zipf (s = 1.05) over the rank of each word.
        cum = list(itertools.accumulate(1 / (r + 1) ** 1.05 for r in range(len(words))))
        return cls(words, cum, rng)

    def message(self, role: MessageRole) -> str:
        mean = 60 if role is MessageRole.ASSISTANT else 12
        n = max(1, min(400, int(self.rng.lognormvariate(0, 0.7) * mean)))
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum_weights, k=n))

    def role(self) -> MessageRole:
        r = self.rng.random()
        if r < 0.45:
            return MessageRole.USER
        if r < 0.85:
            return MessageRole.ASSISTANT
        if r < 0.97:
            return MessageRole.AMBIENT
        return MessageRole.REFUSED


def rows(corpus: Corpus, space_ids: list[str], n: int, start: datetime) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        role = corpus.role()
        out.append(
            {
                "space_id": corpus.rng.choice(space_ids),
                "platform": "web",
                "platform_message_id": None,
                "conversation_id": None,
                "role": role.value,
                "author_id": None if role is MessageRole.ASSISTANT else "u1",
                "author_name": "mercury"
                if role is MessageRole.ASSISTANT
                else corpus.rng.choice(NAMES),
                "text": corpus.message(role),
                "attachments": [],
                "is_bot": role is MessageRole.ASSISTANT,
                "created_at": start + timedelta(seconds=30 * i),
            }
        )
    return out


async def seed(db: Database, url: str, corpus: Corpus, args: argparse.Namespace) -> list[str]:
    """Fill the database; returns the measured space's message texts (for the queries)."""
    noise = [f"noise-{i}" for i in range(NOISE_SPACES)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    async with db.transaction() as s:
        await s.execute(
            insert(Space),
            [{"id": sid, "name": sid, "created_at": start} for sid in [SPACE, *noise]],
        )
    mine = rows(corpus, [SPACE], args.messages, start)
    other = rows(corpus, noise, args.noise, start)
    # Interleaved as they would arrive, so the space's rows are spread over the table.
    merged = sorted(mine + other, key=lambda r: r["created_at"])
    if db.dialect == "postgresql":
        await copy_postgres(url, merged)
    else:
        for i in range(0, len(merged), CHUNK):
            async with db.transaction() as s:
                await s.execute(insert(Message), merged[i : i + CHUNK])
    return [r["text"] for r in mine if r["role"] != MessageRole.REFUSED.value]


async def copy_postgres(url: str, data: list[dict[str, Any]]) -> None:
    import asyncpg

    columns = [c for c in data[0] if c != "attachments"]
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        records = [[r[c] for c in columns] + ["[]"] for r in data]
        await conn.copy_records_to_table(
            "messages", records=records, columns=[*columns, "attachments"]
        )
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


def queries(corpus: Corpus, texts: list[str], n: int) -> list[str]:
    """1-3 distinctive words of a random message: how one looks for something said."""
    stop = set(FUNCTION_WORDS)
    out: list[str] = []
    while len(out) < n:
        found = [w for w in dict.fromkeys(corpus.rng.choice(texts).split()) if w not in stop]
        if found:
            k = min(len(found), corpus.rng.choice((1, 2, 2, 3)))
            out.append(" ".join(corpus.rng.sample(found, k)))
    return out


def like_baseline(db: Database) -> Callable[[str], Awaitable[int]]:
    op = "ILIKE" if db.dialect == "postgresql" else "LIKE"

    async def run(query: str) -> int:
        terms = query.split()
        where = " AND ".join(f"text {op} :w{i}" for i in range(len(terms)))
        sql = (
            "SELECT id FROM messages WHERE space_id = :space "
            "AND role IN ('user', 'assistant', 'ambient') "
            f"AND {where} ORDER BY id DESC LIMIT 10"
        )
        params: dict[str, Any] = {f"w{i}": f"%{w}%" for i, w in enumerate(terms)}
        params["space"] = SPACE
        async with db.transaction() as s:
            return len((await s.execute(text(sql), params)).all())

    return run


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = await fn()
    return (time.perf_counter() - t) * 1000, result


async def bench_one(label: str, url: str, args: argparse.Namespace) -> None:
    await upgrade(url)
    db = Database(url)
    try:
        corpus = Corpus.make(16)
        t = time.perf_counter()
        texts = await seed(db, url, corpus, args)
        seeded_s = time.perf_counter() - t
        qs = queries(corpus, texts, args.n)
        like = like_baseline(db)
        for q in qs[:10]:  # warm the caches and the connection pool
            await search_messages(db, SPACE, q)
            await like(q)
        recall_ms: list[float] = []
        like_ms: list[float] = []
        found = 0
        for q in qs:  # alternating, so the machine's drift hits both alike
            ms, hits = await timed(lambda q=q: search_messages(db, SPACE, q))
            recall_ms.append(ms)
            found += bool(hits)
            ms, _ = await timed(lambda q=q: like(q))
            like_ms.append(ms)
        common_ms = []
        for word in (FUNCTION_WORDS[:5] + CONTENT_WORDS[:5]) * 2:
            ms, _ = await timed(lambda w=word: search_messages(db, SPACE, w))
            common_ms.append(ms)
    finally:
        await db.dispose()

    r50, l50 = statistics.median(recall_ms), statistics.median(like_ms)
    print(f"\n{label}: {args.messages:,} messages in the space + {args.noise:,} in "
          f"{NOISE_SPACES} others, seeded in {seeded_s:.0f} s; {len(qs)} queries, "
          f"{found} with a match")  # fmt: skip
    print(f"  {'':28} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"  {'recall (search_messages)':28} {r50:8.1f} {pct(recall_ms, 0.95):8.1f}")
    print(f"  {'baseline LIKE scan':28} {l50:8.1f} {pct(like_ms, 0.95):8.1f}")
    print(f"  {'common words alone':28} {statistics.median(common_ms):8.1f} "
          f"{pct(common_ms, 0.95):8.1f}")  # fmt: skip
    print(f"  ratio recall / LIKE (p50): {r50 / l50:.3f}x; target p50 < {TARGET_MS:.0f} ms: "
          f"{'met' if r50 < TARGET_MS else 'NOT met'}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="queries per database (default 200)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--noise", type=int, default=20_000, help="messages of other spaces")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--postgres-url", default=None, help="a server to create a db on")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mercury-bench-") as tmp:
        await bench_one("SQLite", f"sqlite+aiosqlite:///{Path(tmp) / 'mercury.db'}", args)
    if args.no_postgres:
        return
    server = postgres_server(args.postgres_url)
    if server is None:
        print("\nPostgreSQL: no server (set MERCURY_TEST_POSTGRES_URL); skipped")
        return
    url = await create_pg_database(server)
    try:
        await bench_one("PostgreSQL", url, args)
    finally:
        await drop_pg_database(url)


if __name__ == "__main__":
    asyncio.run(main())
