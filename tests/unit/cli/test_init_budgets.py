"""`mercury init`'s config shows where spending caps go, commented out, with values that
load once uncommented."""

from __future__ import annotations

import yaml

from mercury.config import Config
from mercury.core.budget import Cap
from mercury.scaffold import InitAnswers, render_config


def test_the_budgets_block_is_commented_and_valid_once_uncommented() -> None:
    text = render_config(InitAnswers(instance="mercury-abc123"))
    assert "budgets" not in yaml.safe_load(text)  # no cap until the operator sets one
    block = [line for line in text.splitlines() if line.startswith(("# budgets:", "#   "))]
    assert block[0] == "# budgets:"
    caps = Config.model_validate(yaml.safe_load("\n".join(b[2:] for b in block))).budgets
    assert caps.instance_day == Cap(usd=20.0)
    assert (caps.space_day, caps.space_month) == (Cap(usd=5.0), Cap(usd=50.0))
    assert (caps.user_day, caps.task_run) == (Cap(usd=1.0), Cap(usd=0.5))
    assert "docs/budgets.md" in text
