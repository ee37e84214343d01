"""The model proxy's pure parts: the upstream URL mapping and the choice of chain leg."""

from __future__ import annotations

import pytest

from mercury.api.model_proxy import allowed_tail, select_leg, upstream_url
from mercury.api.usage import Provider
from mercury.config import Config, ModelLeg


def leg(provider: str, base_url: str | None = None, model: str = "m") -> ModelLeg:
    return ModelLeg.model_validate({"provider": provider, "model": model, "base_url": base_url})


@pytest.mark.parametrize(
    ("base_url", "tail", "query", "expected"),
    [
        (None, "v1/messages", "", "https://api.anthropic.com/v1/messages"),
        (None, "v1/messages", "beta=true", "https://api.anthropic.com/v1/messages?beta=true"),
        (
            None,
            "v1/messages/count_tokens",
            "",
            "https://api.anthropic.com/v1/messages/count_tokens",
        ),
        ("http://127.0.0.1:9000", "v1/messages", "", "http://127.0.0.1:9000/v1/messages"),
        ("http://127.0.0.1:9000/", "v1/messages", "", "http://127.0.0.1:9000/v1/messages"),
        ("https://gw.example/anthropic", "v1/models", "", "https://gw.example/anthropic/v1/models"),
        # A base that already ends in /v1 does not get a second one.
        ("https://gw.example/v1", "v1/messages", "", "https://gw.example/v1/messages"),
    ],
)
def test_anthropic_mapping(base_url: str | None, tail: str, query: str, expected: str) -> None:
    assert upstream_url("anthropic", leg("anthropic", base_url), tail, query) == expected


@pytest.mark.parametrize(
    ("base_url", "tail", "expected"),
    [
        (None, "v1/chat/completions", "https://api.openai.com/v1/chat/completions"),
        (None, "v1/models", "https://api.openai.com/v1/models"),
        (None, "v1", "https://api.openai.com/v1"),
        (
            "http://127.0.0.1:11434/v1",
            "v1/chat/completions",
            "http://127.0.0.1:11434/v1/chat/completions",
        ),
        (
            "https://openrouter.ai/api/v1/",
            "v1/chat/completions",
            "https://openrouter.ai/api/v1/chat/completions",
        ),
        # The base is the API root whatever its version segment says.
        (
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "v1/chat/completions",
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
        ),
        # An agent configured without /v1 in its base URL still lands right.
        ("http://vllm:8000/v1", "chat/completions", "http://vllm:8000/v1/chat/completions"),
    ],
)
def test_openai_mapping(base_url: str | None, tail: str, expected: str) -> None:
    assert upstream_url("openai", leg("openai", base_url), tail) == expected


def test_leg_selection_by_model_then_first_of_provider() -> None:
    config = Config.model_validate(
        {
            "model": {
                "chain": [
                    {"provider": "anthropic", "model": "claude-a", "base_url": "http://a"},
                    {"provider": "openai", "model": "gpt-x", "base_url": "http://o/v1"},
                    {"provider": "anthropic", "model": "claude-b", "base_url": "http://b"},
                ]
            }
        }
    )
    chosen = select_leg(config, "anthropic", "claude-b")
    assert chosen is not None and chosen.base_url == "http://b"
    chosen = select_leg(config, "anthropic", "claude-haiku-unlisted")
    assert chosen is not None and chosen.base_url == "http://a"
    chosen = select_leg(config, "anthropic", None)
    assert chosen is not None and chosen.model == "claude-a"
    # The model name of another provider's leg does not pick across providers.
    chosen = select_leg(config, "anthropic", "gpt-x")
    assert chosen is not None and chosen.model == "claude-a"
    chosen = select_leg(config, "openai", "whatever")
    assert chosen is not None and chosen.model == "gpt-x"


def test_no_leg_for_a_provider() -> None:
    config = Config.model_validate({"model": {"chain": [{"provider": "anthropic", "model": "c"}]}})
    assert select_leg(config, "openai", "gpt-x") is None


@pytest.mark.parametrize(
    ("provider", "tail", "allowed"),
    [
        ("anthropic", "v1/messages", True),
        ("anthropic", "v1/messages/count_tokens", True),
        ("anthropic", "v1/models", True),
        ("anthropic", "v1/models/claude-sonnet-4-5", True),
        ("anthropic", "v1/messages/batches", False),
        ("anthropic", "v1/files", False),
        ("anthropic", "v1/organizations/api_keys", False),
        ("anthropic", "messages", False),
        ("anthropic", "v1/messages/", False),
        ("anthropic", "v1/models/../files", False),
        ("anthropic", "v1/models/%2e%2e", False),
        ("anthropic", "v1/models/a%2Fb", False),
        ("openai", "v1/chat/completions", True),
        ("openai", "chat/completions", True),
        ("openai", "v1/responses", True),
        ("openai", "v1/embeddings", True),
        ("openai", "v1/completions", True),
        ("openai", "v1/models", True),
        ("openai", "v1/models/llama3:8b", True),
        ("openai", "v1/files", False),
        ("openai", "v1/fine_tuning/jobs", False),
        ("openai", "v1/organization/admin_api_keys", False),
        ("openai", "v1/./chat/completions", False),
        ("openai", "", False),
    ],
)
def test_only_model_endpoints_are_forwarded(provider: Provider, tail: str, allowed: bool) -> None:
    assert allowed_tail(provider, tail) is allowed
