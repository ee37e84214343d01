"""Turns a validated input into a reply: the built-in loop, an agent CLI, or the echo.

- echo: input.json names no model and no host API (the image's smoke test);
- agent CLI: `agent.command` is set (cli_backend.py);
- otherwise the built-in tool loop over the model chain (loop.py, chain.py).

The last two start the relay first and point the SDKs and every subprocess at it, with
the run token as API key (settings.relay_env). Files to deliver are those sent with
send_file plus any file created or changed in outbox/ during the run (an agent CLI
cannot call send_file; it writes to outbox/ as its prompt tells it to).

Granted extensions add to the environment of every process the agent starts (their
settings, service URLs and commands: extensions.py), and when input.json says `egress`,
an egress relay whose proxy variables only those processes get: this process's own model
calls go to the relay. The built-in loop also starts the extensions' MCP servers
(mcp_tools.py) and offers their tools beside its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mercury_agent.chain import Chain
from mercury_agent.cli_backend import run_cli
from mercury_agent.contract import INTERNAL, AgentError, AgentInput, LegSpec, Usage
from mercury_agent.egress import EgressRelay, egress_env, egress_socket_for
from mercury_agent.extensions import extension_env
from mercury_agent.loop import run_loop
from mercury_agent.mcp_tools import McpHub
from mercury_agent.prompt import (
    build_messages,
    build_system_prompt,
    discover_skills,
    load_profile,
    render_transcript,
    tools_note,
)
from mercury_agent.providers import Backend, make_backend, preload
from mercury_agent.relay import Relay
from mercury_agent.settings import (
    OUTBOX,
    apply_env,
    relay_env,
    resources_dir,
    space_dir,
    subprocess_env,
)
from mercury_agent.tools import TOOLS, ToolContext

ECHO_MODEL = "echo"


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    files: list[str] = field(default_factory=list)  # relative to /space, under outbox/
    # One entry per model call; None for the echo (no model involved).
    attempts: list[dict[str, Any]] | None = None
    # One entry per tool call of the built-in loop (result.json `tools`); None otherwise.
    tools: list[dict[str, Any]] | None = None


def respond(
    inp: AgentInput,
    attempts: list[dict[str, Any]] | None = None,
    env: MutableMapping[str, str] | None = None,
) -> Reply:
    """The agent's answer to one run; AgentError for a failure result.json reports.

    `attempts` is filled as model calls finish, so the caller still has them when this
    raises. `env` defaults to os.environ, which also receives the relay variables.
    """
    if inp.echo_mode:
        return Reply(text=f"echo: {inp.prompt}", usage=Usage(model=ECHO_MODEL))
    attempts = attempts if attempts is not None else []
    return asyncio.run(_respond(inp, attempts, os.environ if env is None else env))


# --------------------------------------------------------------------------- outbox


def snapshot_outbox(space: Path) -> dict[str, tuple[int, int]]:
    """{"outbox/..." : (mtime_ns, size)} of the regular files in the outbox now."""
    root = space / OUTBOX
    found: dict[str, tuple[int, int]] = {}
    if not root.is_dir() or root.is_symlink():
        return found
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue  # the host delivers regular files only
            st = path.stat()
            found[str(path.relative_to(space))] = (st.st_mtime_ns, st.st_size)
    return found


def outbox_changes(space: Path, before: Mapping[str, tuple[int, int]]) -> list[str]:
    """Files created or modified in the outbox since `before`, sorted."""
    now = snapshot_outbox(space)
    return sorted(rel for rel, sig in now.items() if before.get(rel) != sig)


def _merge_files(sent: list[str], changed: list[str]) -> list[str]:
    files = list(dict.fromkeys(sent))
    files += [f for f in changed if f not in files]
    return files


# --------------------------------------------------------------------------- the run


def _prepare_space(space: Path) -> None:
    if space.is_dir():
        return
    try:
        space.mkdir(parents=True)
    except OSError as exc:
        raise AgentError(
            f"the space dir {space} does not exist ({exc.strerror}); outside a container "
            "set MERCURY_SPACE_DIR",
            INTERNAL,
        ) from None


def _cli_model_env(legs: list[LegSpec], env: Mapping[str, str]) -> dict[str, str]:
    """Model hints for agent CLIs: Claude Code reads ANTHROPIC_MODEL.

    Its small model (titles, summaries) is the chain's model too, unless the operator set
    ANTHROPIC_SMALL_FAST_MODEL (container.env): the host's model proxy refuses models that
    are neither in the chain nor in model.allowed.
    """
    values: dict[str, str] = {}
    if legs:
        values["MERCURY_MODEL"] = legs[0].model
        values["MERCURY_MODEL_PROVIDER"] = legs[0].provider
    anthropic_legs = [leg for leg in legs if leg.provider == "anthropic"]
    if anthropic_legs:
        values["ANTHROPIC_MODEL"] = anthropic_legs[0].model
        if "ANTHROPIC_SMALL_FAST_MODEL" not in env:
            values["ANTHROPIC_SMALL_FAST_MODEL"] = anthropic_legs[0].model
    return values


async def _respond(
    inp: AgentInput, attempts: list[dict[str, Any]], env: MutableMapping[str, str]
) -> Reply:
    assert inp.api is not None  # parse_input guarantees it outside the echo mode
    space = space_dir(env)
    resources = resources_dir(env)
    _prepare_space(space)
    outbox_before = snapshot_outbox(space)

    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(Relay(inp.api.socket, token=inp.api.token))
        values = relay_env(relay.url, inp.api.token)
        if inp.agent.command is not None:
            values.update(_cli_model_env(inp.model.chain, env))
        apply_env(env, values)  # for this process and everything it starts
        # Only for the processes it starts: extensions, and the egress proxy.
        extra = extension_env(inp.extensions, relay.url, env.get("PATH"))
        if inp.egress:
            egress = EgressRelay(egress_socket_for(inp.api.socket), inp.api.token)
            await stack.enter_async_context(egress)
            extra.update(egress_env(egress.url, direct=relay.url))
        child_env = subprocess_env(env, {**extra, **values})
        hub: McpHub | None = None
        if inp.agent.command is None and any(ext.mcp for ext in inp.extensions):
            hub = McpHub(
                inp.extensions,
                env=child_env,
                relay_url=relay.url,
                token=inp.api.token,
                call_timeout_s=inp.agent.bash_timeout_s,
            )
            stack.push_async_callback(hub.close)
            # The servers start (separate processes) while this one imports the model SDKs.
            providers = {leg.provider for leg in inp.model.chain}
            await asyncio.gather(hub.start(), asyncio.to_thread(preload, providers))
        mcp_names = hub.names if hub is not None else []

        _profile, profile_text = load_profile(resources, inp.profile)
        skills = discover_skills(resources, inp.skills)
        system = build_system_prompt(
            inp,
            profile_text=profile_text,
            skills=skills,
            space_dir=space,
            now=datetime.now(UTC),
            tools_note=None
            if inp.agent.command
            else tools_note([t.name for t in TOOLS], mcp_names),
        )
        messages = build_messages(inp)

        if inp.agent.command is not None:
            default_model = inp.model.chain[0].model if inp.model.chain else ""
            outcome = await run_cli(
                inp.agent.command,
                render_transcript(system, messages),
                cwd=space,
                env=child_env,
                timeout_s=inp.model.budget_s,
                default_model=default_model,
                attempts=attempts,
            )
            files = outbox_changes(space, outbox_before)
            return Reply(outcome.reply, outcome.usage, files, attempts)

        preload({leg.provider for leg in inp.model.chain})
        token = inp.api.token

        def factory(leg: LegSpec) -> Backend:
            return make_backend(leg.provider, leg.model, relay.url, token)

        chain = Chain(
            inp.model.chain,
            factory,
            retries_per_leg=inp.model.retries_per_leg,
            budget_s=inp.model.budget_s,
            attempts=attempts,
            rng=random.Random(),
        )
        ctx = ToolContext(
            space_dir=space,
            bash_timeout_s=inp.agent.bash_timeout_s,
            env=child_env,
            remaining=chain.remaining,
            read_only=(resources, *(s.path.parent for s in skills)),
            extra=hub.handlers() if hub is not None else {},
        )
        record: list[dict[str, Any]] = []
        try:
            result = await run_loop(
                chain,
                system=system,
                messages=messages,
                tools=[*TOOLS, *(hub.tools if hub is not None else [])],
                ctx=ctx,
                max_turns=inp.model.max_turns,
                max_tokens=inp.model.max_tokens,
                record=record,
            )
        finally:
            await chain.close()
        files = _merge_files(ctx.files, outbox_changes(space, outbox_before))
        return Reply(result.text, result.usage, files, attempts, record)
