"""The Spaces pages: every space at a glance, and one space's conversation, links,
settings, roles, mutes, person notes and files.

GET  /spaces                       the list, most recently active first (?page=N)
GET  /spaces/{id}                  one space (?before=<message id> pages the conversation)
GET  /spaces/{id}/files            its folder, read-only (?path=a/b)
GET  /spaces/{id}/files/download   one regular file of it, as an attachment (?path=a/b.txt)
POST /spaces/{id}/<action>         link, unlink, profile, model, pause, resume, clear,
                                   role, unrole, mute, unmute, forget (a person's note)

Every action is a plain form POST carrying the session's CSRF token (checked by
render.page) that answers 303 back to the space's page with a fixed notice code, so it
works without JavaScript and a reload does not repeat it; a refused form re-renders the
page with the problem (400). The effects are the same storage calls the chat commands
make (/pause, /resume, clear, /model switch). The folder browser goes through
mercury.sandbox.browse, which never follows a link the agent planted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web

from mercury.adapters.registry import PLATFORMS
from mercury.core.commands import MODEL_PREF
from mercury.core.durations import DurationError, parse_duration
from mercury.core.permissions import role_name_problem
from mercury.core.spaces import is_safe_space_id
from mercury.core.triggers import TRIGGER_PREF, TriggerMode
from mercury.dashboard.deps import deps
from mercury.dashboard.pages.budgets import caps_card
from mercury.dashboard.render import page, render
from mercury.pipeline.commands import find_leg
from mercury.sandbox.browse import BrowseError, list_folder, open_file, split_path
from mercury.sandbox.outputs import display_name
from mercury.sandbox.resources import resources_dir
from mercury.sandbox.spaces import spaces_root
from mercury.storage import (
    SpaceRecord,
    clear_note,
    delete_preference,
    get_conversation,
    get_preferences,
    get_space,
    link_conversation,
    list_mutes,
    list_notes,
    list_roles,
    mute,
    pause_space,
    pause_until_resumed,
    remove_role,
    reset_context,
    resume_space,
    set_preference,
    set_role,
    set_space_profile,
    unlink_conversation,
    unmute,
    utcnow,
)
from mercury.storage.space_views import (
    attachment_names,
    conversation_page,
    linked_conversations,
    space_summaries,
)

__all__ = ["routes"]

routes = web.RouteTableDef()

PER_PAGE = 50
MESSAGES_PER_PAGE = 50
MAX_ID = 255  # chat, thread and user ids: the columns' width
MAX_REASON = 200

# The notices an action redirects with: a fixed code in the URL, never free text.
NOTICES: dict[str, str] = {
    "linked": "Conversation linked to this space.",
    "relinked": "Conversation moved here from another space.",
    "unlinked": "Conversation unlinked: it goes back to its own space.",
    "profile": "Profile changed; the next run uses it.",
    "model": "Model changed; the next run tries it first.",
    "model-default": "Model reset to the chain's order.",
    "trigger": "Trigger mode changed for this space; the next message follows it.",
    "trigger-default": "Trigger mode follows the configuration again.",
    "paused": "Space paused.",
    "resumed": "Space resumed.",
    "cleared": "Context cleared: the next message starts a fresh conversation.",
    "role": "Role set.",
    "unrole": "Role removed.",
    "muted": "User muted.",
    "unmuted": "User unmuted.",
    "forgot": "Note deleted: the agent no longer remembers anything about that person here.",
}


class FormProblem(ValueError):
    """A form field that cannot be used; the message is shown to the operator."""


# --------------------------------------------------------------------------- pure rules


def page_number(raw: str | None) -> int:
    """?page=N (1-based); anything that is not a positive number is page 1."""
    try:
        return max(1, int(raw or "1"))
    except ValueError:
        return 1


def cursor(raw: str | None) -> int | None:
    """?before=<message id>, or None; 400 for something that is not a positive number."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise web.HTTPBadRequest(text="before must be a message id")
    return int(raw)


def field(form: Any, name: str, *, required: bool = True, max_len: int = MAX_ID) -> str:
    """A trimmed text field of a posted form, checked for presence and length."""
    raw = form.get(name)
    value = raw.strip() if isinstance(raw, str) else ""
    if required and not value:
        raise FormProblem(f"{name.replace('_', ' ')} is required")
    if len(value) > max_len or any(ord(c) < 0x20 for c in value):
        raise FormProblem(f"{name.replace('_', ' ')} is too long or holds control characters")
    return value


def platform_field(form: Any) -> str:
    platform = field(form, "platform", max_len=32)
    if platform not in PLATFORMS:
        raise FormProblem(f"unknown platform {platform!r}: one of {', '.join(PLATFORMS)}")
    return platform


def duration_field(form: Any, name: str = "duration") -> timedelta | None:
    """An optional duration in the one grammar (core/durations.py); None when empty."""
    text = field(form, name, required=False, max_len=64)
    if not text:
        return None
    try:
        return timedelta(seconds=parse_duration(text))
    except (DurationError, OverflowError) as exc:
        raise FormProblem(str(exc)) from None


def available_profiles(current: str, default: str) -> list[str]:
    """The profiles in resources/profiles (folders), plus the space's and the default."""
    found: set[str] = {current, default}
    root = resources_dir()
    if root is not None and (root / "profiles").is_dir():
        found.update(p.name for p in (root / "profiles").iterdir() if p.is_dir())
    return sorted(found)


def trigger_source(sources: dict[str, str], config_path: object) -> str:
    """Where `trigger.match` comes from, for the read-only trigger row."""
    if "trigger.match" in sources:
        return f"the environment variable {sources['trigger.match']}"
    if config_path is not None:
        return f"trigger.match in {config_path} (or its default)"
    return "the default (no config file)"


def back(space_id: str, notice: str, anchor: str) -> web.HTTPSeeOther:
    """The redirect after an action: the space's page, the notice, the section."""
    return web.HTTPSeeOther(
        f"/spaces/{quote(space_id, safe='')}?done={notice}#{anchor}",
        headers={"Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- pages


@routes.get("/spaces")
@page
async def spaces_list(request: web.Request) -> web.Response:
    number = page_number(request.query.get("page"))
    found = await space_summaries(deps(request).db, offset=(number - 1) * PER_PAGE, limit=PER_PAGE)
    return render(request, "spaces.html", spaces=found, page_no=number, now=utcnow())


async def _space_or_404(request: web.Request) -> SpaceRecord:
    space = await get_space(deps(request).db, request.match_info["space_id"])
    if space is None:
        raise web.HTTPNotFound(text="no such space")
    return space


async def _detail(
    request: web.Request, space: SpaceRecord, *, error: str | None = None, status: int = 200
) -> web.Response:
    d = deps(request)
    db = d.db
    now = utcnow()
    before = cursor(request.query.get("before"))
    convo = await conversation_page(db, space.id, before=before, limit=MESSAGES_PER_PAGE)
    prefs = await get_preferences(db, space.id)
    chain = d.config.model.chain
    chosen = prefs.get(MODEL_PREF)
    return render(
        request,
        "space.html",
        status=status,
        space=space,
        paused=space.is_paused(now),
        now=now,
        convo=convo,
        before=before,
        attachment_names=attachment_names,
        conversations=await linked_conversations(db, space.id),
        roles=await list_roles(db, space.id),
        mutes=await list_mutes(db, space.id, now=now),
        notes=await list_notes(db, space.id),
        profiles=available_profiles(space.profile, d.config.agent.profile),
        chain=chain,
        chosen_model=chosen,
        current_model=chosen or chain[0].model,
        trigger=d.config.trigger,
        space_trigger=prefs.get(TRIGGER_PREF),
        trigger_modes=[m.value for m in TriggerMode],
        trigger_from=trigger_source(d.loaded.sources, d.loaded.path),
        platforms=list(PLATFORMS),
        caps=await caps_card(d, space.id),
        notice=NOTICES.get(request.query.get("done", "")),
        error=error,
    )


@routes.get("/spaces/{space_id}")
@page
async def space_detail(request: web.Request) -> web.Response:
    return await _detail(request, await _space_or_404(request))


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Outcome:
    notice: str
    anchor: str


async def _link(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    db = deps(request).db
    platform = platform_field(form)
    chat_id = field(form, "chat_id")
    thread_id = field(form, "thread_id", required=False) or None
    before = await get_conversation(db, platform, chat_id)
    await link_conversation(db, platform, chat_id, space.id, thread_id=thread_id)
    moved = before is not None and before.space_id != space.id
    return Outcome("relinked" if moved else "linked", "links")


async def _unlink(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    db = deps(request).db
    platform = platform_field(form)
    chat_id = field(form, "chat_id")
    conv = await get_conversation(db, platform, chat_id)
    if conv is None or conv.space_id != space.id:
        raise FormProblem("that conversation is not linked to this space")
    await unlink_conversation(db, platform, chat_id)
    return Outcome("unlinked", "links")


async def _profile(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    d = deps(request)
    profile = field(form, "profile", max_len=64)
    if profile not in available_profiles(space.profile, d.config.agent.profile):
        raise FormProblem(f"unknown profile {profile!r}")
    await set_space_profile(d.db, space.id, profile)
    return Outcome("profile", "settings")


async def _model(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    d = deps(request)
    wanted = field(form, "model", max_len=200)
    if wanted == "default":
        await delete_preference(d.db, space.id, MODEL_PREF)
        return Outcome("model-default", "settings")
    leg = find_leg(d.config.model.chain, wanted)
    if leg is None:
        raise FormProblem(f"no model {wanted!r} in the chain")
    await set_preference(d.db, space.id, MODEL_PREF, leg.model)  # as /model switch does
    return Outcome("model", "settings")


async def _trigger(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    """The space's own trigger mode, or back to the config's (`default`)."""
    db = deps(request).db
    mode = field(form, "match", max_len=16)
    if mode == "default":
        await delete_preference(db, space.id, TRIGGER_PREF)
        return Outcome("trigger-default", "settings")
    if mode not in {m.value for m in TriggerMode}:
        raise FormProblem(f"unknown trigger mode {mode!r}")
    await set_preference(db, space.id, TRIGGER_PREF, mode)
    return Outcome("trigger", "settings")


async def _pause(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    db = deps(request).db
    span = duration_field(form)
    if span is None:
        await pause_until_resumed(db, space.id)
    else:
        try:
            until = utcnow() + span
        except OverflowError:
            raise FormProblem(
                "that pause is too long; leave it empty to pause until resumed"
            ) from None
        await pause_space(db, space.id, until)
    return Outcome("paused", "settings")


async def _resume(request: web.Request, space: SpaceRecord, _form: Any) -> Outcome:
    await resume_space(deps(request).db, space.id)
    return Outcome("resumed", "settings")


async def _clear(request: web.Request, space: SpaceRecord, _form: Any) -> Outcome:
    await reset_context(deps(request).db, space.id)
    return Outcome("cleared", "settings")


async def _role(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    platform = platform_field(form)
    user_id = field(form, "user_id")
    role = field(form, "role", max_len=32)
    problem = role_name_problem(role)
    if problem:
        raise FormProblem(problem)
    await set_role(deps(request).db, space.id, platform, user_id, role)
    return Outcome("role", "people")


async def _unrole(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    platform = platform_field(form)
    user_id = field(form, "user_id")
    if not await remove_role(deps(request).db, space.id, platform, user_id):
        raise FormProblem("that user has no stored role in this space")
    return Outcome("unrole", "people")


async def _mute(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    platform = platform_field(form)
    user_id = field(form, "user_id")
    span = duration_field(form)
    reason = field(form, "reason", required=False, max_len=MAX_REASON) or None
    try:
        until = None if span is None else utcnow() + span
    except OverflowError:
        raise FormProblem("that mute is too long; leave it empty to mute until unmuted") from None
    await mute(deps(request).db, space.id, platform, user_id, until=until, reason=reason)
    return Outcome("muted", "people")


async def _unmute(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    platform = platform_field(form)
    user_id = field(form, "user_id")
    if not await unmute(deps(request).db, space.id, platform, user_id):
        raise FormProblem("that user is not muted in this space")
    return Outcome("unmuted", "people")


async def _forget(request: web.Request, space: SpaceRecord, form: Any) -> Outcome:
    """Delete one person's note (as an admin's /forget platform:user_id does)."""
    user_key = field(form, "user_key", max_len=300)
    if not await clear_note(deps(request).db, space.id, user_key):
        raise FormProblem("that person has no note in this space")
    return Outcome("forgot", "memory")


ACTIONS = {
    "link": _link,
    "unlink": _unlink,
    "profile": _profile,
    "model": _model,
    "trigger": _trigger,
    "pause": _pause,
    "resume": _resume,
    "clear": _clear,
    "role": _role,
    "unrole": _unrole,
    "mute": _mute,
    "unmute": _unmute,
    "forget": _forget,
}


async def space_action(request: web.Request) -> web.Response:
    """One of ACTIONS on the space, then back to its page (or the page with the problem)."""
    space = await _space_or_404(request)
    form = await request.post()
    action = request.path.rsplit("/", 1)[-1]
    try:
        outcome = await ACTIONS[action](request, space, form)
    except FormProblem as exc:
        fresh = await get_space(deps(request).db, space.id) or space
        return await _detail(request, fresh, error=str(exc), status=400)
    raise back(space.id, outcome.notice, outcome.anchor)


# One plain route per action (no pattern), so the router lists each one by name.
for _name in ACTIONS:
    routes.post(f"/spaces/{{space_id}}/{_name}")(page(space_action))


# --------------------------------------------------------------------------- files


def _folder(request: web.Request, space: SpaceRecord) -> Any:
    """The space's folder on the host (it may not exist yet: no run has made it)."""
    if not is_safe_space_id(space.id):
        raise web.HTTPNotFound(text="this space has no folder")
    return spaces_root(deps(request).config.data_dir) / space.id


def _path_parts(request: web.Request) -> tuple[str, ...]:
    parts = split_path(request.query.get("path", ""))
    if parts is None:
        raise web.HTTPBadRequest(text="not a path inside the space")
    return parts


@routes.get("/spaces/{space_id}/files")
@page
async def space_files(request: web.Request) -> web.Response:
    space = await _space_or_404(request)
    parts = _path_parts(request)
    folder = _folder(request, space)
    try:
        listing = await asyncio.to_thread(list_folder, folder, parts)
        problem = None
    except BrowseError as exc:
        listing, problem = None, str(exc)
    crumbs = [("/".join(parts[: i + 1]), part) for i, part in enumerate(parts)]
    return render(
        request,
        "space_files.html",
        status=200 if problem is None or not parts else 404,
        space=space,
        listing=listing,
        problem=problem,
        path="/".join(parts),
        crumbs=crumbs,
    )


@routes.get("/spaces/{space_id}/files/download")
@page
async def space_download(request: web.Request) -> web.StreamResponse:
    space = await _space_or_404(request)
    parts = _path_parts(request)
    try:
        opened = await asyncio.to_thread(open_file, _folder(request, space), parts)
    except BrowseError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    name = display_name(opened.name)
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
    )
    resp.content_length = opened.size
    with opened:
        await resp.prepare(request)
        sent = 0
        while sent < opened.size:
            chunk = await asyncio.to_thread(opened.read)
            if not chunk:
                break
            chunk = chunk[: opened.size - sent]  # never more than announced
            sent += len(chunk)
            await resp.write(chunk)
    await resp.write_eof()
    return resp
