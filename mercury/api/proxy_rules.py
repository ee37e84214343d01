"""What the model proxy lets through: pure decisions, no I/O.

Everything the agent sends is untrusted (a prompt injection can make it send anything),
and the proxy adds the operator's API key to what it forwards. So every part of a request
passes an allow-list here before it leaves the host:

- `path_problem` / `call_refusal`: the method and path. Only inference calls and model
  listing (`ENDPOINTS`); the same key would otherwise delete fine-tuned models, list stored
  completions or read and delete stored responses. Paths are compared raw (still
  percent-encoded) and must be plain printable ASCII without `%`, `\\`, empty or dot
  segments, so no upstream can decode them into something else than what was checked.
- `model_refusal`: the body's "model" must be one of the chain's models for that provider
  or listed in `model.allowed`; the operator chose what runs may spend money on.
- `forward_request_headers` / `forward_response_headers`: request headers by allow-list
  (content negotiation, API version and beta flags, SDK telemetry), so credentials,
  cookies and organisation/project selectors never reach the provider; responses lose
  hop-by-hop framing, cookies, redirect targets and the operator's organisation ids.
- `upstream_url` / `select_leg`: where an allowed call goes (see model_proxy's doc).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mercury.api.usage import Provider
from mercury.config import Config, ModelLeg

DEFAULT_BASE: dict[str, str] = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
}

# A model id as a path segment: what providers and local servers use (`llama3:8b`,
# `ft:gpt-4o:org::id`, `claude-sonnet-4-5@20250929`). No `%`: ids needing encoding are refused.
_ID = r"[A-Za-z0-9][A-Za-z0-9._:@+-]*"
_V1 = r"(?:v1/)?"  # OpenAI-compatible tails come with or without the SDK's "v1/"

# (method, raw tail) pairs forwarded per provider; POSTs are the ones that name a model.
ENDPOINTS: dict[Provider, tuple[tuple[str, re.Pattern[str]], ...]] = {
    "anthropic": (
        ("POST", re.compile(r"v1/messages")),
        ("POST", re.compile(r"v1/messages/count_tokens")),
        ("GET", re.compile(r"v1/models")),
        ("GET", re.compile(rf"v1/models/{_ID}")),
    ),
    "openai": (
        ("POST", re.compile(rf"{_V1}chat/completions")),
        ("POST", re.compile(rf"{_V1}completions")),
        ("POST", re.compile(rf"{_V1}responses")),
        ("POST", re.compile(rf"{_V1}embeddings")),
        ("GET", re.compile(rf"{_V1}models")),
        ("GET", re.compile(rf"{_V1}models/{_ID}")),
    ),
}

ALLOWED_SUMMARY: dict[Provider, str] = {
    "anthropic": "POST v1/messages, POST v1/messages/count_tokens, GET v1/models[/ID]",
    "openai": "POST chat/completions, completions, responses, embeddings; GET models[/ID]",
}


def path_problem(tail: str) -> str | None:
    """Why the raw `tail` is refused whatever the endpoint, or None.

    Refused: any `%` (an encoded `/`, `.` or `\\` would be decoded by some upstream into a
    path other than the one checked, and model paths never need encoding), backslashes,
    control, space and non-ASCII characters, and empty, `.` or `..` segments.
    """
    if "%" in tail:
        return "percent-encoded characters"
    if "\\" in tail:
        return "a backslash"
    if any(not 0x21 <= ord(c) <= 0x7E for c in tail):
        return "control, space or non-ASCII characters"
    if any(seg in ("", ".", "..") for seg in tail.split("/")):
        return "an empty, '.' or '..' segment"
    return None


def call_refusal(provider: Provider, method: str, tail: str) -> str | None:
    """Why the proxy refuses `method /tail` for `provider` (raw tail), or None to forward."""
    problem = path_problem(tail)
    if problem is not None:
        return f"the host's model proxy refuses paths with {problem}"
    for allowed_method, pattern in ENDPOINTS[provider]:
        if method == allowed_method and pattern.fullmatch(tail):
            return None
    return (
        f"the host's model proxy does not forward {method} /{tail} "
        f"(only model endpoints: {ALLOWED_SUMMARY[provider]})"
    )


def names_model(method: str) -> bool:
    """Whether an allowed call of `method` carries a "model" that must be allowed.

    Every allowed POST is an inference call (or count_tokens) and names its model.
    """
    return method == "POST"


def allowed_models(config: Config, provider: Provider) -> list[str]:
    """The models a run may call at `provider`: its chain legs', then `model.allowed`."""
    names = [leg.model for leg in config.model.chain if leg.provider == provider]
    names += [m for m in config.model.allowed if m not in names]
    return names


def model_refusal(config: Config, provider: Provider, model: Any) -> str | None:
    """Why a request body's "model" value is refused, or None when it may be called."""
    if not isinstance(model, str) or not model:
        return (
            'the request names no model (a non-empty string "model" is required); the host '
            "only forwards calls to the models of model.chain and model.allowed"
        )
    if model in allowed_models(config, provider):
        return None
    return (
        f"model {model!r} is not allowed for {provider} runs: the host forwards only the "
        f"models of model.chain and model.allowed; the operator can allow it by adding "
        f"it to model.allowed in mercury.yaml"
    )


# Request headers forwarded upstream; everything else is dropped. Credentials of any kind
# (Authorization, x-api-key, api-key, cookies), organisation/project selectors
# (OpenAI-Organization, OpenAI-Project, ...), proxy and forwarding headers and hop-by-hop
# headers never pass; the host then adds its own key.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "content-type",
        "anthropic-version",
        "anthropic-beta",
        "openai-beta",
        "user-agent",
        "idempotency-key",
        "x-request-id",
    }
)
# SDK telemetry (x-stainless-lang, -retry-count, -timeout, ...): harmless, and providers use it.
FORWARDED_REQUEST_PREFIXES = ("x-stainless-",)

# Response headers never passed back: hop-by-hop, framing that no longer holds once aiohttp
# has decompressed and re-chunked the body, cookies, redirect targets (the host follows
# none, and a Location may name another host) and the operator's account identifiers.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
        "location",
        "content-location",
        "refresh",
        "openai-organization",
        "openai-project",
        "anthropic-organization-id",
    }
)


def forwards_request_header(name: str) -> bool:
    """Whether a request header called `name` goes upstream."""
    lower = name.lower()
    return lower in FORWARDED_REQUEST_HEADERS or lower.startswith(FORWARDED_REQUEST_PREFIXES)


def forward_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The allow-listed subset of the agent's request headers, in order."""
    return [(k, v) for k, v in headers if forwards_request_header(k)]


def forward_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers that are passed back to the agent."""
    return [(k, v) for k, v in headers if k.lower() not in DROPPED_RESPONSE_HEADERS]


def key_headers(provider: Provider, key: str | None) -> dict[str, str]:
    """The host's credential header for `provider`; none without a key (Ollama, vLLM)."""
    if not key:
        return {}
    if provider == "anthropic":
        return {"x-api-key": key}
    return {"Authorization": f"Bearer {key}"}


def upstream_url(provider: Provider, leg: ModelLeg, tail: str, query: str = "") -> str:
    """The upstream URL for `tail` (the path after /model/<provider>/); see model_proxy."""
    base = (leg.base_url or DEFAULT_BASE[provider]).rstrip("/")
    tail = tail.lstrip("/")
    if provider == "openai":
        tail = tail.removeprefix("v1/") if tail != "v1" else ""
    elif base.endswith("/v1") and (tail.startswith("v1/") or tail == "v1"):
        tail = tail[3:]
    url = f"{base}/{tail}" if tail else base
    return f"{url}?{query}" if query else url


def select_leg(config: Config, provider: str, model: str | None) -> ModelLeg | None:
    """The chain leg for a request: same provider and model, else the provider's first.

    A model from `model.allowed` that no leg names goes to the provider's first leg.
    """
    legs = [leg for leg in config.model.chain if leg.provider == provider]
    for leg in legs:
        if model is not None and leg.model == model:
            return leg
    return legs[0] if legs else None


def duplicate_key_guard(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing duplicate keys: parsers disagree on which one wins, so
    `{"model": "allowed", "model": "other"}` could be checked as one model and billed as
    another upstream."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def model_of(data: Any) -> Any:
    """The "model" value of a parsed request body (None when it has none)."""
    return data.get("model") if isinstance(data, Mapping) else None
