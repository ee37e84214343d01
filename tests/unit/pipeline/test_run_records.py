"""What the run executor writes about a run: pure helpers, no I/O."""

from __future__ import annotations

from mercury.config import Config
from mercury.pipeline.run_record import dropped_note, recorded_model
from mercury.sandbox.outputs import DroppedFile

CONFIG = Config.model_validate(
    {
        "model": {
            "chain": [
                {"provider": "anthropic", "model": "a1"},
                {"provider": "openai", "model": "o1"},
            ],
            "allowed": ["small"],
        }
    }
)


def test_only_a_model_runs_may_call_is_recorded_as_reported() -> None:
    assert recorded_model(CONFIG, "o1") == "o1"
    assert recorded_model(CONFIG, "small") == "small"
    for made_up in ("x" * 100_000, "gpt-free", None, 42, ["a1"]):
        assert recorded_model(CONFIG, made_up) == "a1"


def test_dropped_note_counts_every_file_left_out() -> None:
    one = [DroppedFile("outbox/a", "too large to send")]
    assert dropped_note(one) == "(1 file was not sent: too large to send.)"
    many = [
        DroppedFile("outbox/a", "too large to send"),
        DroppedFile("5 more", "more than 10 files", count=5),
    ]
    assert dropped_note(many) == ("(6 files were not sent: more than 10 files; too large to send.)")
