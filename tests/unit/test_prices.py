"""The price table: the shipped resources/prices.yaml, model.prices on top, dated ids."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from mercury.api.usage import TokenUsage, UsageMeter, cost_usd
from mercury.config import Config, ModelPrice
from mercury.config.prices import (
    SHIPPED_PRICES,
    PriceTable,
    PriceTableError,
    parse_price_file,
    price_table,
    shipped_prices,
    shipped_prices_date,
    unpriced_models,
)


def cfg(prices: dict[str, dict[str, float]] | None = None, **model: object) -> Config:
    return Config.model_validate({"model": {"prices": prices or {}, **model}})


def price(i: float, o: float) -> ModelPrice:
    return ModelPrice(input_per_mtok=i, output_per_mtok=o)


# --------------------------------------------------------------------------- shipped file


def test_the_shipped_table_is_dated_and_covers_the_common_models() -> None:
    updated = shipped_prices_date()
    assert isinstance(updated, date) and updated.year >= 2026
    table = shipped_prices()
    for model in (
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-haiku-4-5",
        "claude-opus-4-5",
        "claude-3-5-haiku",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
    ):
        assert model in table, model
    for name, p in table.items():
        # A typo (a missing digit, input and output swapped) would show up here.
        assert 0 < p.input_per_mtok <= p.output_per_mtok <= 200, name


def test_the_shipped_table_names_its_sources() -> None:
    text = SHIPPED_PRICES.read_text()
    assert "platform.claude.com" in text and "openai.com" in text


def test_shipped_prices_are_the_published_ones() -> None:
    table = shipped_prices()
    assert table["claude-sonnet-4-5"] == price(3.0, 15.0)
    assert table["claude-opus-4-1"] == price(15.0, 75.0)
    assert table["gpt-4o-mini"] == price(0.15, 0.6)


# --------------------------------------------------------------------------- merging


def test_model_prices_override_and_extend_the_shipped_table() -> None:
    table = price_table(
        cfg(
            {
                "claude-sonnet-4-5": {"input_per_mtok": 2.0, "output_per_mtok": 10.0},
                "llama3:70b": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
            }
        )
    )
    assert table["claude-sonnet-4-5"] == price(2.0, 10.0)  # the operator's, not shipped
    assert table["llama3:70b"] == price(0.1, 0.2)  # added
    assert table["gpt-4o"] == price(2.5, 10.0)  # the rest of the shipped table stays
    # The operator's entry also prices the dated ids of that model.
    assert table["claude-sonnet-4-5-20250929"] == price(2.0, 10.0)


def test_the_example_config_still_has_no_prices_of_its_own() -> None:
    # The merge is at the point of use: model.prices keeps what the operator wrote.
    assert Config().model.prices == {}
    assert len(price_table(Config())) == len(shipped_prices()) > 0


def test_without_the_shipped_file_only_model_prices_count(tmp_path: Path) -> None:
    table = price_table(
        cfg({"m": {"input_per_mtok": 1, "output_per_mtok": 2}}), shipped=tmp_path / "none.yaml"
    )
    assert dict(table) == {"m": price(1, 2)}
    assert "gpt-4o" not in table


# --------------------------------------------------------------------------- lookups


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),  # Vertex AI's form
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest listed name wins
        ("gpt-5-pro-2025-10-06", "gpt-5-pro"),
        ("GPT-4o", "gpt-4o"),  # case does not matter
    ],
)
def test_a_dated_id_finds_its_alias(model: str, entry: str) -> None:
    assert price_table(Config()).entry_for(model) == entry


@pytest.mark.parametrize(
    "model",
    [
        "claude-opus-4-9",  # a new model, not a snapshot of claude-opus-4
        "gpt-4o-audio-preview",  # another model sharing a prefix
        "gpt-5-turbo",
        "gpt-4",
        "llama3:70b",
        "",
    ],
)
def test_other_names_have_no_price(model: str) -> None:
    table = price_table(Config())
    assert table.price_of(model) is None
    assert model not in table
    with pytest.raises(KeyError):
        table[model]


def test_the_meter_prices_a_dated_id_with_the_shipped_table() -> None:
    # What RunHost does: the real meter, the merged table, a dated model id.
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=100_000, model=None)
    table = price_table(Config())
    assert cost_usd(table, usage, "claude-sonnet-4-5-20250929") == pytest.approx(3.0 + 1.5)
    assert cost_usd(table, usage, "my-local-model") is None
    record = UsageMeter(table).make_record(
        "run-1", "space-a", "anthropic", usage, "claude-haiku-4-5-20251001", status=200
    )
    assert record.cost_usd == pytest.approx(1.0 + 0.5)


def test_unpriced_models_lists_the_chain_and_allowed_names_without_a_price() -> None:
    config = Config.model_validate(
        {
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-sonnet-4-5-20250929"},
                    {"provider": "openai", "model": "llama3", "base_url": "http://127.0.0.1:1"},
                ],
                "allowed": ["claude-haiku-4-5", "tiny"],
            }
        }
    )
    assert unpriced_models(config) == ["llama3", "tiny"]


def test_a_price_table_is_a_read_only_mapping() -> None:
    table = PriceTable({"a": price(1, 2)})
    assert list(table) == ["a"] and len(table) == 1 and dict(table) == {"a": price(1, 2)}


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prices: [", "not valid YAML"),
        ("updated: 2026-12-01\n", "'prices' mapping"),
        ("updated: soon\nprices: {}\n", "'updated' must be a date"),
        ("prices:\n  m: {input_per_mtok: -1, output_per_mtok: 2}\n", "prices.m.input_per_mtok"),
        ("prices:\n  m: {input_per_mtok: 1}\n", "prices.m.output_per_mtok"),
        ("prices:\n  m: {input_per_mtok: 1, output_per_mtok: 2, cache: 3}\n", "prices.m.cache"),
    ],
)
def test_a_bad_price_file_is_named_in_one_line(text: str, fragment: str) -> None:
    with pytest.raises(PriceTableError) as info:
        parse_price_file(text, "prices.yaml")
    message = str(info.value)
    assert message.startswith("prices.yaml: ") and fragment in message
    assert "\n" not in message
