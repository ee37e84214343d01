"""`mercury-ctl`: the agent's command line for its own space, over the host API.

Stdlib only, so it works from any shell or script in the container. It talks to
$MERCURY_API_URL (the runtime's relay to the host socket) with the run token in
$MERCURY_API_TOKEN, for the space in $MERCURY_SPACE_ID (asked from /v1/whoami if unset)::

    mercury-ctl prefs [get KEY | set KEY VALUE | unset KEY]
    mercury-ctl tasks [list | add "prompt" (--every 1h | --cron "0 9 * * 1-5"
                                            | --at "tomorrow 09:00")
                                            [--silent] [--skip-missed] | cancel ID]
    mercury-ctl say "text"
    mercury-ctl recall "words" [--limit N]      (search the whole history of this chat)
    mercury-ctl roles [list | set PLATFORM USER ROLE | remove PLATFORM USER]   (admin)
    mercury-ctl mutes [list | add PLATFORM USER [--for 1h] [--reason R]
                       | remove PLATFORM USER]                                 (admin)
    mercury-ctl memory [show | set TEXT | append TEXT | clear]   (the person this run answers)

Output is a compact table or a line of text (`--json` prints the server's JSON). Exit
status 0 on success, 1 with the server's error message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

PROG = "mercury-ctl"
TIMEOUT_S = 30.0


class CtlError(Exception):
    """A failure to report on stderr with exit status 1."""


class Client:
    """A tiny JSON client for the host API, bound to one space."""

    def __init__(self, base_url: str, token: str, space_id: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._space_id = space_id
        # Never through an HTTP proxy: the relay is on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Client:
        url = env.get("MERCURY_API_URL", "").strip()
        token = env.get("MERCURY_API_TOKEN", "").strip()
        if not url or not token:
            raise CtlError(
                "MERCURY_API_URL and MERCURY_API_TOKEN must be set (they are, inside a Mercury run)"
            )
        return cls(url, token, env.get("MERCURY_SPACE_ID", "").strip() or None)

    @property
    def space_id(self) -> str:
        if self._space_id is None:
            self._space_id = str(self.request("GET", "/v1/whoami")["space_id"])
        return self._space_id

    def space(self, *parts: str | int) -> str:
        """The path /spaces/<space>/<parts...>, each part URL-quoted."""
        quoted = [urllib.parse.quote(str(p), safe="") for p in (self.space_id, *parts)]
        return "/spaces/" + "/".join(quoted)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer, or CtlError with the server's message."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise CtlError(_error_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the host API at {self.base_url}: {reason}") from None
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            raise CtlError(f"the host API sent a non-JSON answer to {method} {path}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The `error.message` of a JSON error body, else the status line."""
    try:
        body = json.loads(exc.read() or b"null")
        message = body["error"]["message"]
        if isinstance(message, str) and message:
            return f"{message} (HTTP {exc.code})"
    except (ValueError, KeyError, TypeError, OSError):
        pass
    return f"HTTP {exc.code} {exc.reason}"


# --------------------------------------------------------------------------- output


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    """A compact left-aligned table; '-' for empty cells."""
    cells = [headers] + [["-" if c is None or c == "" else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _schedule(task: dict[str, Any]) -> str:
    if task.get("cron"):
        return f"cron {task['cron']}"
    if task.get("every_s"):
        return f"every {_duration(int(task['every_s']))}"
    return f"at {task.get('at')}"


def _duration(seconds: int) -> str:
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _recall_lines(hits: list[dict[str, Any]]) -> str:
    """One "date · author · snippet" line per match (dates in UTC, to the minute)."""
    lines = []
    for hit in hits:
        when = str(hit.get("created_at") or "")[:16].replace("T", " ")
        author = hit.get("author") or hit.get("role") or "?"
        lines.append(f"{when} UTC · {author} · {hit['snippet']}")
    return "\n".join(lines)


def _render(command: str, action: str, result: Any) -> str:
    """Human-readable output of one command's result."""
    if command == "prefs":
        if action == "list":
            prefs = result["preferences"]
            return _table([[k, v] for k, v in prefs.items()], ["KEY", "VALUE"]) if prefs else ""
        if action == "get":
            return str(result["value"])
        if action == "set":
            return f"set {result['key']}"
        return f"unset {result['key']}"
    if command == "tasks":
        if action == "list":
            rows = [
                [
                    t["id"],
                    _schedule(t),
                    t.get("next_run_at"),
                    "" if t.get("enabled", True) else "disabled",
                    t.get("last_outcome"),
                    _short(t["prompt"]),
                ]
                for t in result["tasks"]
            ]
            headers = ["ID", "SCHEDULE", "NEXT RUN", "STATE", "LAST", "PROMPT"]
            return _table(rows, headers) if rows else ""
        if action == "add":
            task = result["task"]
            nxt = f", next run {task['next_run_at']}" if task.get("next_run_at") else ""
            return f"task {task['id']} scheduled: {_schedule(task)}{nxt}"
        return f"task {result['id']} cancelled"
    if command == "recall":
        return _recall_lines(result["hits"]) or "no match"
    if command == "say":
        return f"sent ({result.get('remaining', '?')} interim messages left in this run)"
    if command == "roles":
        if action == "list":
            rows = [[r["platform"], r["user_id"], r["role"]] for r in result["roles"]]
            return _table(rows, ["PLATFORM", "USER", "ROLE"]) if rows else ""
        if action == "set":
            return f"{result['platform']}/{result['user_id']} is now {result['role']}"
        return f"removed the role of {result['platform']}/{result['user_id']}"
    if command == "mutes":
        if action == "list":
            rows = [
                [m["platform"], m["user_id"], m.get("until") or "forever", m.get("reason")]
                for m in result["mutes"]
            ]
            return _table(rows, ["PLATFORM", "USER", "UNTIL", "REASON"]) if rows else ""
        if action == "add":
            until = result.get("until") or "until unmuted"
            return f"muted {result['platform']}/{result['user_id']} ({until})"
        return f"unmuted {result['platform']}/{result['user_id']}"
    if command == "memory":
        if action == "clear":
            return "note cleared" if result["deleted"] else "there was no note to clear"
        if action == "show":
            return result["text"] or "(no note about this person yet)"
        return f"note saved ({len(result['text'])} of {result['max_chars']} characters)"
    return json.dumps(result, indent=2)


# --------------------------------------------------------------------------- commands


def _call(client: Client, args: argparse.Namespace) -> tuple[str, Any]:
    """Perform the parsed command; returns (action, server result)."""
    command = args.command
    action: str = getattr(args, "action", None) or "list"
    if command == "prefs":
        if action == "list":
            return action, client.request("GET", client.space("preferences"))
        path = client.space("preferences", args.key)
        if action == "get":
            return action, client.request("GET", path)
        if action == "set":
            return action, client.request("PUT", path, {"value": args.value})
        return action, client.request("DELETE", path)
    if command == "tasks":
        if action == "list":
            return action, client.request("GET", client.space("tasks"))
        if action == "add":
            body: dict[str, Any] = {"prompt": args.prompt}
            for key in ("every", "cron", "at"):
                if getattr(args, key) is not None:
                    body[key] = getattr(args, key)
            if args.silent:
                body["silent"] = True
            if args.skip_missed:
                body["catch_up"] = "skip"
            return action, client.request("POST", client.space("tasks"), body)
        return action, client.request("DELETE", client.space("tasks", args.id))
    if command == "say":
        return "say", client.request("POST", client.space("messages"), {"text": args.text})
    if command == "recall":
        query = urllib.parse.urlencode({"q": args.query, "limit": args.limit})
        return "recall", client.request("GET", f"{client.space('recall')}?{query}")
    if command == "memory":
        me = client.space("memory", "me")
        action = getattr(args, "action", None) or "show"
        if action == "show":
            return action, client.request("GET", me)
        if action == "clear":
            return action, client.request("DELETE", me)
        key = "text" if action == "set" else "append"
        return action, client.request("PUT", me, {key: args.text})
    if command == "roles":
        if action == "list":
            return action, client.request("GET", client.space("roles"))
        path = client.space("roles", args.platform, args.user)
        if action == "set":
            return action, client.request("PUT", path, {"role": args.role})
        return action, client.request("DELETE", path)
    # mutes
    if action == "list":
        return action, client.request("GET", client.space("mutes"))
    path = client.space("mutes", args.platform, args.user)
    if action == "add":
        mute_body: dict[str, Any] = {}
        if args.duration is not None:
            mute_body["until"] = args.duration
        if args.reason is not None:
            mute_body["reason"] = args.reason
        return action, client.request("PUT", path, mute_body)
    return action, client.request("DELETE", path)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage this chat's space: preferences, scheduled tasks, interim "
        "messages, and (admins only) roles and mutes.",
    )
    parser.add_argument("--json", action="store_true", help="print the server's JSON answer")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prefs = commands.add_parser("prefs", help="the space's preferences (key/value)")
    p_actions = prefs.add_subparsers(dest="action", metavar="ACTION")
    p_actions.add_parser("list", help="all preferences (the default)")
    p_actions.add_parser("get", help="one preference's value").add_argument("key")
    p_set = p_actions.add_parser("set", help="set a preference")
    p_set.add_argument("key")
    p_set.add_argument("value")
    p_actions.add_parser("unset", help="remove a preference").add_argument("key")

    tasks = commands.add_parser("tasks", help="scheduled prompts of this space")
    t_actions = tasks.add_subparsers(dest="action", metavar="ACTION")
    t_actions.add_parser("list", help="all tasks (the default)")
    t_add = t_actions.add_parser("add", help="schedule a prompt")
    t_add.add_argument("prompt", help="what the agent is asked when the task runs")
    when = t_add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="DURATION", help="repeat, e.g. 30m, 1h, 1d")
    when.add_argument(
        "--cron", metavar="EXPR", help='5-field cron, e.g. "0 9 * * 1-5" (the space\'s time zone)'
    )
    when.add_argument(
        "--at",
        metavar="TIME",
        help='once: "in 2h", "tomorrow 09:00", "mon 9am" or ISO (the space\'s time zone)',
    )
    t_add.add_argument(
        "--silent",
        action="store_true",
        help="post nothing unless you send something (mercury-ctl say) or the task fails",
    )
    t_add.add_argument(
        "--skip-missed",
        action="store_true",
        help="a run missed while Mercury was down is skipped (default: run it once at start)",
    )
    t_actions.add_parser("cancel", help="delete a task").add_argument("id", type=int)

    say = commands.add_parser("say", help="post an interim message to the chat now")
    say.add_argument("text")

    recall = commands.add_parser(
        "recall", help="search this chat's whole message history (best matches first)"
    )
    recall.add_argument("query", help="plain words; all must match, else any of them")
    recall.add_argument(
        "--limit", type=int, default=10, metavar="N", help="at most N matches (1-50, default 10)"
    )

    roles = commands.add_parser("roles", help="user roles in this space (admin only)")
    r_actions = roles.add_subparsers(dest="action", metavar="ACTION")
    r_actions.add_parser("list", help="all stored roles (the default)")
    r_set = r_actions.add_parser("set", help="give a user a role")
    r_set.add_argument("platform")
    r_set.add_argument("user")
    r_set.add_argument("role", help="admin, member or a custom role")
    r_remove = r_actions.add_parser("remove", help="drop a user's stored role")
    r_remove.add_argument("platform")
    r_remove.add_argument("user")

    mutes = commands.add_parser("mutes", help="muted users in this space (admin only)")
    m_actions = mutes.add_subparsers(dest="action", metavar="ACTION")
    m_actions.add_parser("list", help="mutes in force (the default)")
    m_add = m_actions.add_parser("add", help="ignore a user's messages")
    m_add.add_argument("platform")
    m_add.add_argument("user")
    m_add.add_argument(
        "--for", dest="duration", metavar="DURATION", help="e.g. 1h, 2d (default: until removed)"
    )
    m_add.add_argument("--reason")
    m_remove = m_actions.add_parser("remove", help="lift a mute")
    m_remove.add_argument("platform")
    m_remove.add_argument("user")

    memory = commands.add_parser(
        "memory", help="your note about the person this run answers (only theirs, private)"
    )
    n_actions = memory.add_subparsers(dest="action", metavar="ACTION")
    n_actions.add_parser("show", help="the note (the default)")
    n_actions.add_parser("set", help="replace the whole note").add_argument("text")
    n_actions.add_parser("append", help="add a line to the note").add_argument("text")
    n_actions.add_parser("clear", help="delete the note")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one command; 0 on success, 1 on failure (argparse exits 2 on bad usage)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        client = Client.from_env(os.environ if env is None else env)
        action, result = _call(client, args)
    except CtlError as exc:
        print(f"{PROG}: {exc}", file=err)
        return 1
    text = json.dumps(result, indent=2) if args.json else _render(args.command, action, result)
    if text:
        print(text, file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
