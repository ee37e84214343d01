"""The Chat page: the web chat inside the dashboard, beside the list of its conversations.

GET /dashboard/chat            the most recently active web conversation (or "main")
GET /dashboard/chat?space=ops  that conversation (a new name opens a new one)

Not a second chat client: the page is the layout (menu, conversation list, an empty
message pane and the compose form) and loads the web chat's own script (/chat/chat.js),
which talks to the web chat's JSON API (/api/chat/...) and follows its event stream. The
dashboard's login is the web chat's (one WebAuth), so the session cookie that opened this
page is the one the script's requests carry; /chat keeps working unchanged.

The list comes from storage (`platform_chats`: the "web" conversations, newest activity
first, bounded) because the web chat's message log lives in memory; the messages
themselves come from that log, as at /chat. Without JavaScript the page still shows the
list and links each conversation's space page, where the stored messages are.
"""

from __future__ import annotations

from aiohttp import web

from mercury.adapters.web.spacelog import valid_space
from mercury.dashboard.deps import deps
from mercury.dashboard.render import login_url, page, render
from mercury.storage.chat_views import ChatSummary, platform_chats

__all__ = ["DEFAULT_SPACE", "choose_space", "routes"]

routes = web.RouteTableDef()

PLATFORM = "web"
DEFAULT_SPACE = "main"  # the web chat's own default conversation
LIST_LIMIT = 100


def choose_space(wanted: str | None, chats: list[ChatSummary]) -> str:
    """The conversation to show: the one asked for if it is a valid name, else the most
    recently active one, else the web chat's default."""
    if wanted and valid_space(wanted):
        return wanted
    return chats[0].chat_id if chats else DEFAULT_SPACE


@routes.get("/dashboard/chat")
@page
async def chat_page(request: web.Request) -> web.Response:
    d = deps(request)
    web_chat = d.adapters.get(PLATFORM)
    chats = await platform_chats(d.db, PLATFORM, limit=LIST_LIMIT)
    wanted = request.query.get("space")
    space = choose_space(wanted, chats)
    current = next((c for c in chats if c.chat_id == space), None)
    return render(
        request,
        "chat.html",
        enabled=web_chat is not None,
        chats=chats,
        space=space,
        current=current,
        refused=wanted is not None and wanted != space,
        max_upload=getattr(web_chat, "max_upload", None),
        list_limit=LIST_LIMIT,
        login_url=login_url(request),
    )
