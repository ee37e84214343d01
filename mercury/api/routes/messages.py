"""Interim messages: what an agent posts to its conversation before its final reply.

    POST   /spaces/{space_id}/messages  {text}             {"sent": true, "remaining": n}

At most `SpaceApi.interim_per_run` per run (429 beyond); 502 when delivery failed.
"""

from __future__ import annotations

from aiohttp import web

from mercury.api.auth import grant_of, http_error
from mercury.api.routes.common import BASE, json_body, required_string, space_api
from mercury.logging import get_logger

log = get_logger(__name__)

MAX_MESSAGE_CHARS = 4_000
# Interim-message counters kept in memory; the oldest runs are forgotten beyond this.
MAX_TRACKED_RUNS = 10_000

routes = web.RouteTableDef()


@routes.post(f"{BASE}/messages")
async def post_message(request: web.Request) -> web.Response:
    api = space_api(request)
    grant = grant_of(request)
    text = required_string(await json_body(request), "text", max_chars=MAX_MESSAGE_CHARS)
    counts = api.interim_counts
    used = counts.get(grant.run_id, 0)
    if used >= api.interim_per_run:
        raise http_error(
            web.HTTPTooManyRequests,
            "rate_limit_error",
            f"at most {api.interim_per_run} interim messages per run; put the rest in the reply",
        )
    # Counted before sending, so concurrent calls cannot exceed the cap.
    counts[grant.run_id] = used + 1
    counts.move_to_end(grant.run_id)
    while len(counts) > MAX_TRACKED_RUNS:
        counts.popitem(last=False)
    try:
        await api.send_interim(grant.run_id, grant.space_id, text)
    except Exception as exc:
        log.warning("interim message failed", run=grant.run_id, error=str(exc))
        raise http_error(
            web.HTTPBadGateway, "api_error", "the message could not be delivered"
        ) from None
    return web.json_response({"sent": True, "remaining": api.interim_per_run - used - 1})
