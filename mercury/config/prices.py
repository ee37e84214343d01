"""The price table: the shipped resources/prices.yaml, with `model.prices` on top.

Why a table is shipped: without prices every call's cost is unknown, so dollar spending
caps (docs/budgets.md) would never be reached and `mercury usage` would show $0. The file
is dated and names its sources; an operator's `model.prices` entry replaces the shipped
one of the same name and adds models it lacks.

Why the merge happens here and not in the config model: `model.prices` keeps meaning
"what the operator wrote" (so the example config still equals the built-in defaults), and
the one place that prices calls (`RunHost`'s `UsageMeter`) asks `price_table(config)`.

Names match exactly, or as a listed name followed by a snapshot suffix (a date such as
-20250929, @20250929 or -2024-08-06, or -latest), the longest listed name winning: the
provider's dated ids cost what their alias costs. Any other suffix does not match, so
"gpt-5-pro" never takes the price of "gpt-5" unless listed itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mercury.config.sections import Config, ModelPrice

# The repository's resources/ (next to mercury/): what `mercury run` from a checkout uses.
SHIPPED_PRICES = Path(__file__).resolve().parents[2] / "resources" / "prices.yaml"

# What may follow a listed name: a snapshot of the same model, never another model.
_SNAPSHOT = re.compile(r"^[-@](?:\d{8}|\d{4}-\d{2}-\d{2}|latest)(?:[-@:].*)?$")


class PriceTableError(ValueError):
    """A price file that cannot be read; the message names the file and the entry."""


class PriceTable(Mapping[str, ModelPrice]):
    """Model name -> price, where a dated snapshot id finds its alias's price.

    A read-only Mapping, so `UsageMeter` (`name in prices`, `prices[name]`) uses it as is.
    """

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        # Later entries win: `price_table` puts the operator's after the shipped ones.
        self._lower = {name.lower(): price for name, price in self._prices.items()}

    def entry_for(self, model: str) -> str | None:
        """The listed name (lowercased) that prices `model`: itself, or the longest alias
        followed by a snapshot suffix; None when none does. Case does not matter."""
        wanted = model.strip().lower()
        if wanted in self._lower:
            return wanted
        best: str | None = None
        for name in self._lower:
            if (
                wanted.startswith(name)
                and _SNAPSHOT.match(wanted[len(name) :])
                and (best is None or len(name) > len(best))
            ):
                best = name
        return best

    def price_of(self, model: str | None) -> ModelPrice | None:
        """The price of `model`, or None when neither it nor its alias is listed."""
        if not model:
            return None
        name = self.entry_for(model)
        return self._lower[name] if name is not None else None

    def __getitem__(self, model: str) -> ModelPrice:
        price = self.price_of(model) if isinstance(model, str) else None
        if price is None:
            raise KeyError(model)
        return price

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def parse_price_file(text: str, source: str) -> tuple[date | None, dict[str, ModelPrice]]:
    """(`updated` date, prices) of a price file's text; PriceTableError names the problem."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PriceTableError(f"{source}: not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict) or not isinstance(data.get("prices"), dict):
        raise PriceTableError(f"{source}: expected a mapping with a 'prices' mapping")
    updated = data.get("updated")
    if updated is not None and not isinstance(updated, date):
        raise PriceTableError(f"{source}: 'updated' must be a date like 2026-12-01")
    prices: dict[str, ModelPrice] = {}
    for name, entry in data["prices"].items():
        if not isinstance(name, str) or not name.strip():
            raise PriceTableError(f"{source}: model names must be non-empty strings")
        try:
            prices[name] = ModelPrice.model_validate(entry)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or "entry"
            raise PriceTableError(
                f"{source}: prices.{name}.{where}: {problem['msg']}".rstrip(".")
            ) from None
    return updated if isinstance(updated, date) else None, prices


@functools.cache
def _shipped(path: Path) -> tuple[date | None, dict[str, ModelPrice]]:
    if not path.is_file():
        # Installed without the repository's resources/: only model.prices then.
        return None, {}
    return parse_price_file(path.read_text(encoding="utf-8"), str(path))


def shipped_prices(path: Path = SHIPPED_PRICES) -> dict[str, ModelPrice]:
    """The shipped table (empty when the file is not there); read once per process."""
    return dict(_shipped(path)[1])


def shipped_prices_date(path: Path = SHIPPED_PRICES) -> date | None:
    """When the shipped table was last checked against the providers' pages."""
    return _shipped(path)[0]


def price_table(config: Config, *, shipped: Path = SHIPPED_PRICES) -> PriceTable:
    """The prices calls are counted with: the shipped table, `model.prices` on top."""
    return PriceTable(shipped_prices(shipped) | dict(config.model.prices))


def unpriced_models(config: Config, *, shipped: Path = SHIPPED_PRICES) -> list[str]:
    """The chain's and the allowed models that have no price (their calls cost $0)."""
    table = price_table(config, shipped=shipped)
    names = [leg.model for leg in config.model.chain] + list(config.model.allowed)
    return sorted({n for n in names if table.price_of(n) is None})


__all__ = [
    "SHIPPED_PRICES",
    "PriceTable",
    "PriceTableError",
    "parse_price_file",
    "price_table",
    "shipped_prices",
    "shipped_prices_date",
    "unpriced_models",
]
