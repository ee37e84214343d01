"""Authentication of host API requests by per-run token, and the JSON error shape.

The token arrives the way model SDKs send an API key - `Authorization: Bearer <token>` or
`x-api-key: <token>` - so an agent can hand it to any SDK as its "API key" and point the
SDK at the host. Handlers read the caller's `RunGrant` with `grant_of(request)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from mercury.api.tokens import RunGrant, TokenStore

GRANT_KEY = web.RequestKey("mercury_run_grant", RunGrant)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(kind: str, message: str) -> dict[str, Any]:
    """One error shape both model SDKs read (`error.message`): Anthropic's, which OpenAI's
    SDK parses as well, so an agent sees a plain message whatever it talks through."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def json_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(error_body(kind, message), status=status)


def http_error(exc: type[web.HTTPException], kind: str, message: str) -> web.HTTPException:
    """An HTTP exception with a JSON error body, for handlers that raise."""
    return exc(text=json.dumps(error_body(kind, message)), content_type="application/json")


# Added by the in-container relay (mercury_agent/relay.py) to every request it forwards.
RUN_TOKEN_HEADER = "X-Mercury-Run-Token"


def token_from_headers(headers: Any) -> tuple[str | None, str | None]:
    """(token, problem): the token from Bearer or x-api-key; a problem if they disagree.

    `X-Mercury-Run-Token` wins over both: a client calling an extension's service through
    the host sends that service's own Authorization, which is not a run token."""
    run_token = (headers.get(RUN_TOKEN_HEADER) or "").strip()
    if run_token:
        return run_token, None
    bearer = None
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        bearer = value.strip()
    api_key = (headers.get("x-api-key") or "").strip() or None
    if bearer and api_key and bearer != api_key:
        return None, "two different credentials (Authorization and x-api-key)"
    return bearer or api_key, None


def grant_of(request: web.Request) -> RunGrant:
    """The caller's grant (set by the auth middleware on every routed request)."""
    return request[GRANT_KEY]


def require_permission(request: web.Request, permission: str) -> RunGrant:
    """The caller's grant if it holds `permission` (core.permissions decides); else 403."""
    grant = grant_of(request)
    if not grant.may(permission):
        raise http_error(
            web.HTTPForbidden,
            "permission_error",
            f"this call needs the {permission!s} permission, which the run's caller "
            f"(role {grant.role}) does not have in this space",
        )
    return grant


def auth_middleware(tokens: TokenStore) -> Middleware:
    """401 without a live token; 403 when a `{space_id}` route names another space."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        token, problem = token_from_headers(request.headers)
        if problem:
            return json_error(401, "authentication_error", f"rejected: {problem}")
        if not token:
            return json_error(
                401,
                "authentication_error",
                "missing run token: send Authorization: Bearer <token>, x-api-key: <token> "
                f"or {RUN_TOKEN_HEADER}: <token>",
            )
        grant = tokens.lookup(token)
        if grant is None:
            return json_error(
                401, "authentication_error", "unknown or expired run token (the run has ended?)"
            )
        space_id = request.match_info.get("space_id")
        if space_id is not None and space_id != grant.space_id:
            return json_error(
                403, "permission_error", "this run's token is not valid for another space"
            )
        request[GRANT_KEY] = grant
        return await handler(request)

    return middleware
