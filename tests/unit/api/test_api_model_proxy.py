"""The model proxy's pure decisions (mercury.api.proxy_rules), as tables: the upstream URL,
the chain leg, which method+path, model and headers pass. Each refused row is an attack."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mercury.api.proxy_rules import (
    call_refusal,
    duplicate_key_guard,
    forward_request_headers,
    forward_response_headers,
    key_headers,
    model_refusal,
    path_problem,
    select_leg,
    upstream_url,
)
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
    ("provider", "method", "tail", "allowed"),
    [
        # Inference calls and model listing pass.
        ("anthropic", "POST", "v1/messages", True),
        ("anthropic", "POST", "v1/messages/count_tokens", True),
        ("anthropic", "GET", "v1/models", True),
        ("anthropic", "GET", "v1/models/claude-sonnet-4-5", True),
        ("anthropic", "GET", "v1/models/claude-sonnet-4-5@20250929", True),
        ("openai", "POST", "v1/chat/completions", True),
        ("openai", "POST", "chat/completions", True),
        ("openai", "POST", "v1/completions", True),
        ("openai", "POST", "v1/responses", True),
        ("openai", "POST", "responses", True),
        ("openai", "POST", "v1/embeddings", True),
        ("openai", "GET", "v1/models", True),
        ("openai", "GET", "models", True),
        ("openai", "GET", "v1/models/llama3:8b", True),
        ("openai", "GET", "v1/models/ft:gpt-4o:acme::abc123", True),
        # The same key would delete fine-tuned models, list stored completions, read and
        # delete stored responses: other methods on allowed paths are refused.
        ("openai", "DELETE", "v1/models/ft:gpt-4o:acme::abc123", False),
        ("openai", "DELETE", "models/ft:gpt-4o:acme::abc123", False),
        ("openai", "GET", "v1/chat/completions", False),
        ("openai", "GET", "chat/completions", False),
        ("openai", "GET", "v1/chat/completions/chatcmpl-123", False),
        ("openai", "POST", "v1/chat/completions/chatcmpl-123", False),
        ("openai", "DELETE", "v1/chat/completions/chatcmpl-123", False),
        ("openai", "GET", "v1/chat/completions/chatcmpl-123/messages", False),
        ("openai", "GET", "v1/responses/resp_123", False),
        ("openai", "DELETE", "v1/responses/resp_123", False),
        ("openai", "POST", "v1/responses/resp_123/cancel", False),
        ("openai", "GET", "v1/responses/resp_123/input_items", False),
        ("openai", "GET", "v1/responses", False),
        ("openai", "POST", "v1/models", False),
        ("openai", "PUT", "v1/chat/completions", False),
        ("openai", "PATCH", "v1/chat/completions", False),
        ("openai", "HEAD", "v1/models", False),
        ("openai", "OPTIONS", "v1/models", False),
        ("anthropic", "DELETE", "v1/models/claude-sonnet-4-5", False),
        ("anthropic", "GET", "v1/messages", False),
        ("anthropic", "PUT", "v1/messages", False),
        ("anthropic", "POST", "v1/models", False),
        # Other APIs the key reaches.
        ("openai", "GET", "v1/files", False),
        ("openai", "POST", "v1/files", False),
        ("openai", "GET", "v1/files/file-abc/content", False),
        ("openai", "POST", "v1/batches", False),
        ("openai", "POST", "v1/fine_tuning/jobs", False),
        ("openai", "GET", "v1/organization/admin_api_keys", False),
        ("openai", "POST", "v1/uploads", False),
        ("openai", "POST", "v1/vector_stores", False),
        ("openai", "POST", "v1/assistants", False),
        ("anthropic", "POST", "v1/messages/batches", False),
        ("anthropic", "GET", "v1/messages/batches", False),
        ("anthropic", "GET", "v1/files", False),
        ("anthropic", "GET", "v1/organizations/api_keys", False),
        ("anthropic", "POST", "messages", False),
        # Path tricks: dot segments, encodings, backslashes, empty segments.
        ("anthropic", "POST", "v1/messages/", False),
        ("anthropic", "GET", "v1/models/../files", False),
        ("anthropic", "GET", "v1/models/..", False),
        ("anthropic", "GET", "v1/models/.", False),
        ("anthropic", "GET", "v1/models/%2e%2e", False),
        ("anthropic", "GET", "v1/models/%2E%2E/files", False),
        ("anthropic", "GET", "v1/models/a%2Fb", False),
        ("anthropic", "GET", "v1/models/a%2fb", False),
        ("anthropic", "GET", "v1/models/a%5cb", False),
        ("anthropic", "GET", "v1/models/claude%2dx", False),
        ("anthropic", "GET", "v1/models/%252e%252e", False),
        ("anthropic", "GET", "v1/models/a\\..\\files", False),
        ("anthropic", "GET", "v1/models/a\\b", False),
        ("anthropic", "POST", "v1//messages", False),
        ("anthropic", "POST", "/v1/messages", False),
        ("anthropic", "GET", "v1/models/a\x00b", False),
        ("anthropic", "GET", "v1/models/a\tb", False),
        ("anthropic", "GET", "v1/models/a b", False),
        ("anthropic", "GET", "v1/models/a\x7fb", False),
        ("anthropic", "GET", "v1/models/cl\u00e4ude", False),
        ("openai", "POST", "v1/./chat/completions", False),
        ("openai", "POST", "v1/chat/completions;x=1", False),
        ("openai", "", "", False),
        ("openai", "GET", "", False),
        ("openai", "GET", "v1", False),
    ],
)
def test_only_inference_calls_and_model_listing_are_forwarded(
    provider: Provider, method: str, tail: str, allowed: bool
) -> None:
    refusal = call_refusal(provider, method, tail)
    assert (refusal is None) is allowed, refusal
    if refusal is not None:
        assert "model proxy" in refusal


def test_refusals_say_what_is_allowed() -> None:
    refusal = call_refusal("openai", "DELETE", "v1/models/ft:x")
    assert refusal is not None
    assert "DELETE /v1/models/ft:x" in refusal and "POST chat/completions" in refusal
    refusal = call_refusal("anthropic", "GET", "v1/models/%2e%2e")
    assert refusal is not None and "percent-encoded" in refusal


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("v1/messages", None),
        ("v1/models/llama3:8b", None),
        ("v1/models/%2e", "percent-encoded characters"),
        ("v1/models/%41", "percent-encoded characters"),
        ("v1/models/%", "percent-encoded characters"),
        ("v1\\messages", "a backslash"),
        ("v1/\x00", "control, space or non-ASCII characters"),
        ("v1/\r\nX: y", "control, space or non-ASCII characters"),
        ("v1/\u2215", "control, space or non-ASCII characters"),  # a Unicode division slash
        ("v1/\uff0e\uff0e", "control, space or non-ASCII characters"),  # fullwidth dots
        ("v1//messages", "an empty, '.' or '..' segment"),
        ("v1/messages/", "an empty, '.' or '..' segment"),
        ("./v1/messages", "an empty, '.' or '..' segment"),
        ("v1/../messages", "an empty, '.' or '..' segment"),
        ("", "an empty, '.' or '..' segment"),
    ],
)
def test_path_problems(tail: str, problem: str | None) -> None:
    assert path_problem(tail) == problem


ALLOWED_CONFIG = Config.model_validate(
    {
        "model": {
            "chain": [
                {"provider": "anthropic", "model": "claude-a", "base_url": "http://a"},
                {"provider": "openai", "model": "gpt-x", "base_url": "http://o/v1"},
                {"provider": "anthropic", "model": "claude-b"},
            ],
            "allowed": ["claude-haiku-4-5", "text-embedding-3-small"],
        }
    }
)


@pytest.mark.parametrize(
    ("provider", "model", "allowed"),
    [
        ("anthropic", "claude-a", True),
        ("anthropic", "claude-b", True),
        ("openai", "gpt-x", True),
        ("anthropic", "claude-haiku-4-5", True),  # model.allowed
        ("openai", "text-embedding-3-small", True),  # model.allowed
        # Another model the key could pay for, or one of the other provider's legs.
        ("anthropic", "claude-opus-4-1", False),
        ("openai", "o1-pro", False),
        ("anthropic", "gpt-x", False),
        ("openai", "claude-a", False),
        # Near misses are other names.
        ("anthropic", "claude-a ", False),
        ("anthropic", "Claude-A", False),
        ("anthropic", "claude-a\x00", False),
        # Missing or not a string.
        ("anthropic", None, False),
        ("anthropic", "", False),
        ("anthropic", 7, False),
        ("anthropic", ["claude-a"], False),
        ("anthropic", {"name": "claude-a"}, False),
    ],
)
def test_only_the_chains_models_and_model_allowed(
    provider: Provider, model: Any, allowed: bool
) -> None:
    refusal = model_refusal(ALLOWED_CONFIG, provider, model)
    assert (refusal is None) is allowed, refusal
    if refusal is not None:
        assert "model.allowed" in refusal
        if isinstance(model, str) and model:
            assert repr(model) in refusal


def test_models_of_model_allowed_go_to_the_providers_first_leg() -> None:
    chosen = select_leg(ALLOWED_CONFIG, "anthropic", "claude-haiku-4-5")
    assert chosen is not None and chosen.model == "claude-a"


def test_duplicate_keys_are_refused() -> None:
    # {"model": "allowed", "model": "other"}: checked as one, billed as the other upstream.
    with pytest.raises(ValueError, match="duplicate key 'model'"):
        json.loads(
            '{"model": "claude-a", "model": "claude-opus-4-1"}',
            object_pairs_hook=duplicate_key_guard,
        )
    with pytest.raises(ValueError, match="duplicate key"):
        json.loads('{"model": "a", "x": {"k": 1, "k": 2}}', object_pairs_hook=duplicate_key_guard)
    assert json.loads('{"model": "a", "x": {"model": "b"}}', object_pairs_hook=duplicate_key_guard)


@pytest.mark.parametrize(
    ("name", "forwarded"),
    [
        ("Content-Type", True),
        ("Accept", True),
        ("anthropic-version", True),
        ("Anthropic-Beta", True),
        ("OpenAI-Beta", True),
        ("User-Agent", True),
        ("X-Stainless-Lang", True),
        ("x-stainless-retry-count", True),
        ("Idempotency-Key", True),
        # Credentials of every kind: the agent's run token arrives in the first two.
        ("Authorization", False),
        ("x-api-key", False),
        ("api-key", False),
        ("Cookie", False),
        ("Proxy-Authorization", False),
        ("X-Goog-Api-Key", False),
        # Organisation and project selectors: another org or project billed with the key.
        ("OpenAI-Organization", False),
        ("OpenAI-Project", False),
        ("Anthropic-Organization-Id", False),
        ("X-Organization", False),
        ("X-Project-Id", False),
        # Routing, forwarding, framing and hop-by-hop headers.
        ("Host", False),
        ("Content-Length", False),
        ("Transfer-Encoding", False),
        ("Content-Encoding", False),
        ("Accept-Encoding", False),
        ("Connection", False),
        ("Upgrade", False),
        ("TE", False),
        ("Forwarded", False),
        ("X-Forwarded-For", False),
        ("X-Forwarded-Host", False),
        ("X-Real-IP", False),
        ("X-HTTP-Method-Override", False),
        ("X-Original-URL", False),
    ],
)
def test_request_headers_by_allow_list(name: str, forwarded: bool) -> None:
    assert forward_request_headers([(name, "v")]) == ([(name, "v")] if forwarded else [])


def test_response_headers_lose_framing_cookies_redirects_and_org_ids() -> None:
    upstream = [
        ("Content-Type", "application/json"),
        ("request-id", "req_1"),
        ("anthropic-ratelimit-requests-remaining", "9"),
        ("Content-Length", "10"),
        ("Content-Encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=b"),
        ("Location", "http://elsewhere/"),
        ("OpenAI-Organization", "org-operator"),
        ("OpenAI-Project", "proj_operator"),
        ("anthropic-organization-id", "0000-org"),
    ]
    assert [k for k, _ in forward_response_headers(upstream)] == [
        "Content-Type",
        "request-id",
        "anthropic-ratelimit-requests-remaining",
    ]


def test_the_hosts_key_header_per_provider() -> None:
    assert key_headers("anthropic", "sk-ant") == {"x-api-key": "sk-ant"}
    assert key_headers("openai", "sk-o") == {"Authorization": "Bearer sk-o"}
    assert key_headers("openai", None) == {} and key_headers("anthropic", "") == {}
