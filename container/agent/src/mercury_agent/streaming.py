"""Reading a streamed model answer: what breaks a stream, and OpenAI's chunks assembled.

Every model call streams (the host's model proxy shows the answer as it is written). These
helpers, split from providers.py, turn what can go wrong in a stream into the failures
chain.py already classifies (a cut or stalled stream is transient, an error event carries
its status), and put OpenAI's chunks back together into one answer for parse_openai.
"""

from __future__ import annotations

import functools
import ssl
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn


class MalformedReply(Exception):
    """The provider answered 2xx with something that is not a usable reply."""


def as_dict(obj: Any) -> dict[str, Any]:
    """SDK response models -> plain dicts (the parsers take either)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise MalformedReply(f"unexpected response object {type(obj).__name__}")


def as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@functools.cache
def relay_tls_context() -> ssl.SSLContext:
    """The clients' TLS settings. They only ever talk to the relay, plain HTTP on 127.0.0.1,
    so this trusts no CA at all: the SDKs' default loads the whole CA bundle for every
    client (about 45 ms, measured), and a client that somehow met an https URL fails
    instead of connecting unverified."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


# --------------------------------------------------------------------------- streams

# An Anthropic stream reports a failure after its 200 headers as an `error` event; the SDK
# raises it with the stream's 2xx status. These are the statuses the same failure has as
# a plain answer (Anthropic's error docs), so the chain classifies both alike: an
# overloaded model is retried, not taken for a request this leg rejects.
_ANTHROPIC_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def stream_cut(what: str, marker: str) -> ConnectionError:
    """A stream that ended cleanly but early: transient, like a cut plain answer."""
    return ConnectionError(f"the {what} stream ended before {marker}: the answer is incomplete")


def _http_errors(name: str) -> tuple[type[BaseException], ...]:
    """`name` (e.g. "TimeoutException") of the loaded HTTP libraries under the SDKs (httpx,
    or httpx2 in newer Anthropic SDKs)."""
    modules = [sys.modules.get(lib) for lib in ("httpx", "httpx2")]
    return tuple(getattr(m, name) for m in modules if m is not None and hasattr(m, name))


def _stream_failure(exc: Exception, provider: str) -> BaseException | None:
    """What a failure while reading a stream is to the chain; None: raise it unchanged.

    The SDKs wrap network errors of the request itself, but not always those of a body
    read later as a stream (Anthropic's raises the HTTP library's own errors), which the
    chain would take for a bug.
    """
    sdk = sys.modules.get(provider)
    if sdk is not None and isinstance(exc, sdk.APIStatusError):
        status = getattr(exc, "status_code", None)
        if provider == "anthropic" and isinstance(status, int) and status < 400:
            body = getattr(exc, "body", None)
            inner = body.get("error") if isinstance(body, Mapping) else None
            kind = inner.get("type") if isinstance(inner, Mapping) else None
            response = exc.response
            mapped = type(response)(
                _ANTHROPIC_ERROR_STATUS.get(str(kind), 500),
                headers=response.headers,
                request=response.request,
            )
            return sdk.APIStatusError(exc.message, response=mapped, body=body)
        return None
    if isinstance(exc, MalformedReply | TimeoutError | OSError) or (
        sdk is not None and isinstance(exc, sdk.APIError)
    ):
        return None
    if isinstance(exc, _http_errors("TimeoutException")):
        return TimeoutError(f"the model's stream stalled ({type(exc).__name__})")
    if isinstance(exc, _http_errors("RequestError")):
        return ConnectionError(f"the model's stream broke off: {type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):  # an event the SDK could not decode (JSON, schema)
        return MalformedReply(f"undecodable {provider} stream: {type(exc).__name__}: {exc}")
    return None


def raise_stream_failure(exc: Exception, provider: str) -> NoReturn:
    failure = _stream_failure(exc, provider)
    if failure is None:
        raise exc
    raise failure from exc


# --------------------------------------------------------------------------- Anthropic


def assemble_openai(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A stream's chat.completion.chunk dicts -> the ChatCompletion dict `parse_openai`
    reads; ConnectionError when the stream ended before its finish_reason.

    As the SDK's own accumulator: content and argument fragments are joined in order, a
    tool call is keyed by its `index`; its id and name come from the first delta that has
    them (some compatible servers repeat them on every delta). The usage is the last one
    sent: with include_usage, a final chunk without choices.
    """
    data: dict[str, Any] = {"model": "", "choices": [], "usage": None}
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    seen = False
    for chunk in chunks:
        data["model"] = data["model"] or chunk.get("model") or ""
        if isinstance(chunk.get("usage"), Mapping):
            data["usage"] = dict(chunk["usage"])
        for choice in chunk.get("choices") or []:
            # n=1: the one choice is index 0 (a server that omits the index means it too).
            if not isinstance(choice, Mapping) or choice.get("index") not in (0, None):
                continue
            seen = True
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, Mapping):
                    continue
                index = call.get("index")
                if not isinstance(index, int):  # non-standard: an id starts a new call
                    index = len(calls) if call.get("id") or not calls else max(calls)
                entry = calls.setdefault(index, {"id": None, "type": "function"})
                fn = entry.setdefault("function", {"name": "", "arguments": ""})
                entry["id"] = entry["id"] or call.get("id")
                fragment = call.get("function") or {}
                fn["name"] = fn["name"] or fragment.get("name") or ""
                arguments = fragment.get("arguments")
                if isinstance(arguments, str) and isinstance(fn["arguments"], str):
                    fn["arguments"] += arguments
                elif isinstance(arguments, Mapping):  # a server sending the object whole
                    fn["arguments"] = dict(arguments)
            finish = choice.get("finish_reason") or finish
    if not seen:
        return data  # parse_openai: "no choices"
    if finish is None:
        raise stream_cut("OpenAI-compatible", "its finish_reason")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    data["choices"] = [{"index": 0, "message": message, "finish_reason": finish}]
    return data
