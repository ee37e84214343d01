"""Recall: search the space's whole message history (beyond the prompt's window).

    GET /spaces/{space_id}/recall?q=WORDS[&limit=N]
        {"query": q, "hits": [{"message_id", "created_at", "author", "role", "snippet",
                                "rank"}]}

Best matches first; `snippet` marks the words found «like this»; `author` is the stored
display name (null when the platform gave none). `q` is plain words (1-500 characters,
search syntax is not interpreted); `limit` 1-50, default 10. Only the run's own space
(the auth middleware refuses another space's id) and only for a caller who may use the
agent (`run`): the history is what that person could read in the chat anyway.
"""

from __future__ import annotations

from aiohttp import web

from mercury.api.auth import require_permission
from mercury.api.routes.common import BASE, bad, iso, space_api
from mercury.core.permissions import Permission
from mercury.storage.recall import MAX_LIMIT, RecallHit, query_words, search_messages

MAX_QUERY_CHARS = 500
DEFAULT_LIMIT = 10

routes = web.RouteTableDef()


def _query(request: web.Request) -> str:
    q = request.query.get("q")
    if q is None or not q.strip():
        raise bad("'q' is required: the words to search the history for")
    if len(q) > MAX_QUERY_CHARS:
        raise bad(f"'q' is too long ({len(q)} characters, at most {MAX_QUERY_CHARS})")
    if not query_words(q):
        raise bad("'q' has no letters or digits to search for")
    return q


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise bad(f"'limit' must be a whole number from 1 to {MAX_LIMIT}, not {raw[:20]!r}")
    return limit


def _hit_json(hit: RecallHit) -> dict[str, object]:
    return {
        "message_id": hit.message_id,
        "created_at": iso(hit.created_at),
        "author": hit.author_name,
        "role": hit.role.value,
        "snippet": hit.snippet,
        "rank": round(hit.rank, 6),
    }


@routes.get(f"{BASE}/recall")
async def recall(request: web.Request) -> web.Response:
    grant = require_permission(request, Permission.RUN)
    q = _query(request)
    limit = _limit(request)
    hits = await search_messages(space_api(request).db, grant.space_id, q, limit=limit)
    return web.json_response({"query": q, "hits": [_hit_json(h) for h in hits]})
