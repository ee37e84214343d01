"""A run's input.json (but its host API token): the prompt, the history window, the
space's preferences, the caller and what the agent remembers about them."""

from __future__ import annotations

from typing import Any

from mercury.config import Config
from mercury.core.commands import MODEL_PREF
from mercury.core.history import HistoryItem, select_history
from mercury.pipeline.payload import JobPayload
from mercury.sandbox.contract import Caller, RunInput, run_input
from mercury.storage import Database, JobRecord, MessageRole, repo

__all__ = ["build_run_input"]


async def build_run_input(
    config: Config,
    db: Database,
    job: JobRecord,
    payload: JobPayload,
    run_id: str,
    profile: str,
    reset_at: Any,
) -> RunInput:
    """The run's input.json but for its host API token (set once its access opens)."""
    hist_cfg = config.history
    # One session for the run's reads: each of its own costs a round of the pool.
    async with db.transaction() as s:
        rows = await repo.recent_messages(
            s,
            job.space_id,
            limit=hist_cfg.turns + 1,
            # Accepted requests, our replies and overheard chatter; never a refused message.
            roles=(MessageRole.USER, MessageRole.ASSISTANT, MessageRole.AMBIENT),
            # The history ends at the message this run answers: what was said after it is
            # the future (a scheduled task answers no message and sees everything).
            answering=payload.message_id,
        )
        prefs = await repo.get_preferences(s, job.space_id)
        # The caller's own note, by the run's user key: never anyone else's (a run with
        # no user key, the operator's or a creatorless task's, gets none).
        note = await repo.get_note(s, job.space_id, payload.user_key) if payload.user_key else None
    items = [
        HistoryItem(
            id=str(m.id),
            author_id=m.author_id or "",
            author_name=m.author_name or "",
            text=m.text,
            ts=m.created_at,
            is_bot=m.is_bot or m.role is MessageRole.ASSISTANT,
            attachments=tuple(m.attachments or ()),
        )
        for m in rows
        if m.id != payload.message_id
    ]
    window = select_history(
        items, turns=hist_cfg.turns, max_chars=hist_cfg.max_chars, since=reset_at
    )
    return run_input(
        config,
        run_id=run_id,
        space_id=job.space_id,
        token="",
        prompt=payload.prompt,
        model_first=prefs.get(MODEL_PREF),  # /model switch: the chosen leg goes first
        profile=profile,
        platform=payload.platform,
        messages=tuple(window),
        caller=Caller(payload.author_id, payload.author_name, payload.role),
        attachments=payload.attachments,
        preferences={k: v for k, v in prefs.items() if not k.startswith("_")},
        person_note=note.text if note is not None else None,
    )
