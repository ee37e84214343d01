"""`mercury usage` and `mercury budget`, run as real subprocesses on a tmp site's SQLite.

The site's database is migrated and filled through the storage functions (what a running
Mercury writes: usage rows per run, model_calls per metered call); every change the CLI
makes is read back through them. `--now` pins "today", so no assertion depends on the
wall clock.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from mercury.core.budget import Cap, Scope
from mercury.pipeline.budget import read_overrides, write_override
from mercury.storage import Database, add_usage, default_sqlite_url, get_or_create_space, upgrade
from mercury.storage.spend import add_model_call
from tests.integration.mercury_site import mercury

NOW = "2026-11-30T12:00:00"
TODAY = date(2026, 11, 30)
CONFIG = """\
data_dir: data
budgets:
  instance_day: $20
  space_day: $5
  user_day: 200k tokens
"""


async def call(db: Database, space: str, usd: float | None, tokens: int, user: str | None) -> None:
    await add_model_call(
        db,
        space_id=space,
        run_id=f"run-{space}",
        provider="anthropic",
        model="claude-sonnet-4-5",
        input_tokens=tokens,
        output_tokens=0,
        cost_usd=usd,
        status=200,
        incomplete=False,
        user_key=user,
        at=datetime(2026, 11, 30, 9, tzinfo=UTC),
    )


@pytest.fixture
async def site(tmp_path: Path) -> Path:
    (tmp_path / "mercury.yaml").write_text(CONFIG)
    url = default_sqlite_url(tmp_path / "data")
    await upgrade(url)
    db = Database(url)
    try:
        await get_or_create_space(db, "alpha")
        await get_or_create_space(db, "beta")
        await get_or_create_space(db, "idle")
        await add_usage(db, "alpha", model="claude-sonnet-4-5", input_tokens=1000,
                        output_tokens=200, cost_usd=1.5, runs=2, day=TODAY)  # fmt: skip
        await add_usage(db, "alpha", model="gpt-4o", input_tokens=10, output_tokens=5,
                        cost_usd=0.25, day=date(2026, 11, 28))  # fmt: skip
        await add_usage(db, "beta", model="llama3", input_tokens=5000, output_tokens=100,
                        cost_usd=0.0, day=TODAY)  # fmt: skip
        # Out of a 7-day window from NOW:
        await add_usage(db, "beta", model="gpt-4o", input_tokens=1, output_tokens=1,
                        cost_usd=9.0, day=date(2026, 11, 1))  # fmt: skip
        await call(db, "alpha", 4.5, 1200, "web:bob")
        await call(db, "beta", None, 5100, "web:eve")
    finally:
        await db.dispose()
    return tmp_path


async def overrides(site: Path, space: str) -> dict[Scope, Cap | None]:
    db = Database(default_sqlite_url(site / "data"))
    try:
        return await read_overrides(db, space)
    finally:
        await db.dispose()


# --------------------------------------------------------------------------- usage


async def test_usage_json_has_days_spaces_totals_and_todays_caps(site: Path) -> None:
    r = mercury("usage", "--days", "7", "--json", "--now", NOW, cwd=site)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["from"], report["to"]) == ("2026-11-24", "2026-11-30")
    assert [(d["day"], d["space_id"], d["tokens"], d["cost_usd"]) for d in report["per_day"]] == [
        ("2026-11-28", "alpha", 15, 0.25),
        ("2026-11-30", "alpha", 1200, 1.5),
        ("2026-11-30", "beta", 5100, 0.0),
    ]
    assert [(s["space_id"], s["runs"], s["cost_usd"]) for s in report["per_space"]] == [
        ("alpha", 3, 1.75),
        ("beta", 1, 0.0),
    ]
    assert report["total"] == {
        "runs": 4,
        "input_tokens": 6010,
        "output_tokens": 305,
        "tokens": 6315,
        "cost_usd": 1.75,
    }
    caps = {c["space_id"]: {s["scope"]: s for s in c["caps"]} for c in report["caps"]}
    assert set(caps) == {"alpha", "beta"}
    alpha = caps["alpha"]
    assert alpha["instance_day"]["spent"] == {"usd": 4.5, "tokens": 6300}  # all spaces
    assert alpha["space_day"]["cap"]["usd"] == 5.0
    assert alpha["space_day"]["spent"] == {"usd": 4.5, "tokens": 1200}
    assert alpha["space_day"]["resets_at"] == "2026-12-01T00:00:00+00:00"
    # An unpriced model's calls count tokens only.
    assert caps["beta"]["space_day"]["spent"] == {"usd": 0.0, "tokens": 5100}


async def test_usage_prints_tables_and_todays_caps(site: Path) -> None:
    r = mercury("usage", "--now", NOW, cwd=site)
    assert r.returncode == 0, r.stderr
    assert "Usage per day, 2026-11-01 .. 2026-11-30 (UTC days)" in r.stdout
    assert "Total: 5 runs, 6,317 tokens (6,011 in, 306 out), $10.75." in r.stdout
    assert "Today (2026-11-30) against the caps:" in r.stdout
    assert "All spaces, per day: $20.00 — $4.50 used — resets 2026-12-01 00:00 UTC" in r.stdout
    assert "Space alpha, per day: $5.00 — $4.50 used" in r.stdout
    assert "Space beta, per day: $5.00 — $0.00 used" in r.stdout


async def test_usage_of_one_space(site: Path) -> None:
    r = mercury("usage", "--space", "beta", "--json", "--now", NOW, cwd=site)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {d["space_id"] for d in report["per_day"]} == {"beta"}
    assert report["total"]["cost_usd"] == 9.0
    assert [c["space_id"] for c in report["caps"]] == ["beta"]


async def test_usage_without_caps_says_where_they_are_set(site: Path) -> None:
    (site / "mercury.yaml").write_text("data_dir: data\n")
    r = mercury("usage", "--now", NOW, cwd=site)
    assert r.returncode == 0, r.stderr
    assert "No spending caps are set" in r.stdout and "docs/budgets.md" in r.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["usage", "--space", "nope"], 'no space "nope"'),
        (["usage", "--days", "0"], "--days"),
        (["usage", "--now", "yesterday"], "ISO 8601"),
    ],
)
async def test_usage_refuses_bad_input_in_one_line(
    site: Path, args: list[str], fragment: str
) -> None:
    r = mercury(*args, cwd=site)
    assert r.returncode != 0
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_usage_without_a_database_says_what_to_run(tmp_path: Path) -> None:
    (tmp_path / "mercury.yaml").write_text("data_dir: data\n")
    r = mercury("usage", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error: no database at ") and "mercury db upgrade" in r.stderr
    assert not (tmp_path / "data" / "mercury.db").exists()  # not created empty


# --------------------------------------------------------------------------- budget


async def test_budget_show_lists_each_cap_with_its_source_spend_and_reset(site: Path) -> None:
    db = Database(default_sqlite_url(site / "data"))
    try:
        await write_override(db, "alpha", Scope.SPACE_MONTH, Cap(usd=50.0))
    finally:
        await db.dispose()
    r = mercury("budget", "show", "alpha", "--user", "web:bob", "--now", NOW, cwd=site)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == 'Space alpha ("you" below is web:bob).'
    assert (
        "• This space, per month: $50.00 (set for this space) — $4.50 used"
        " — resets 2026-12-01 00:00 UTC (in 12 h)"
    ) in lines
    assert (
        "• Each person, per day: 200,000 tokens — you: 1,200 tokens used"
        " — resets 2026-12-01 00:00 UTC (in 12 h)"
    ) in lines
    assert lines[-1] == "Change a cap of this space with: mercury budget set alpha <cap> <value>."

    r = mercury("budget", "show", "alpha", "--json", "--now", NOW, cwd=site)
    caps = {c["scope"]: c for c in json.loads(r.stdout)["caps"]}
    assert (caps["space_month"]["source"], caps["space_day"]["source"]) == ("space", "config")
    assert caps["user_day"]["spent"] is None  # nobody in particular


async def test_budget_set_stores_the_spaces_own_cap(site: Path) -> None:
    r = mercury("budget", "set", "alpha", "space_day", "$12.50", cwd=site)
    assert r.returncode == 0, r.stderr
    assert "This space's daily cap is now $12.50." in r.stdout
    assert "within 2 s" in r.stdout
    r = mercury("budget", "set", "alpha", "user", "500k", "tokens", cwd=site)
    assert r.returncode == 0, r.stderr
    r = mercury("budget", "set", "alpha", "task_run", "off", cwd=site)
    assert r.returncode == 0, r.stderr
    assert await overrides(site, "alpha") == {
        Scope.SPACE_DAY: Cap(usd=12.5),
        Scope.USER_DAY: Cap(tokens=500_000),
        Scope.TASK_RUN: None,
    }
    assert await overrides(site, "beta") == {}

    r = mercury("budget", "set", "alpha", "space_day", "default", cwd=site)
    assert r.returncode == 0, r.stderr
    assert "follows mercury.yaml again: $5.00." in r.stdout
    assert Scope.SPACE_DAY not in await overrides(site, "alpha")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["alpha", "instance_day", "$50"],
            "error: instance_day is the operator's cap for all spaces: "
            "set budgets.instance_day in mercury.yaml",
        ),
        (
            ["alpha", "space_day", "lots"],
            'error: space_day: expected a dollar amount like $5 or 2.50, or tokens like "500k '
            'tokens", got "lots"',
        ),
        (["alpha", "weekly", "$5"], 'error: unknown cap "weekly": expected space_day (day), '),
        (["nope", "space_day", "$5"], 'error: no space "nope" in this database'),
    ],
)
async def test_budget_set_refuses_in_one_line_and_changes_nothing(
    site: Path, args: list[str], message: str
) -> None:
    r = mercury("budget", "set", *args, cwd=site)
    assert r.returncode == 1
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1
    assert await overrides(site, "alpha") == {}
