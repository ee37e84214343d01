"""What the dashboard's integration tests share: a real App's HTTP side and an HTML tree.

- `running(tmp_path)` serves a real App's HTTP side (database, login, adapters, dashboard)
  on 127.0.0.1, as `mercury run` builds it minus Docker; `serving(loaded)` does the same for
  a configuration loaded elsewhere. `login` and `csrf_token` act as an operator does.
- `parse(html)` reads a page with the standard library's html.parser into a tree of `Node`s
  (unescaped text and attribute values), so the tests check the parsed text rather than
  grepping markup; `get_page` fetches and parses one.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from mercury.app import App
from mercury.config import Config, LoadedConfig, Secrets
from mercury.http.sessions import SESSION_COOKIE
from mercury.storage import Database
from mercury.storage.migrate import upgrade

PASSWORD = "dashboard test password"
GOOD = {"username": "admin", "password": PASSWORD}  # the form a login posts

# --------------------------------------------------------------------------- the site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, app: App) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{app.http.bound_port}"

    def client(self) -> aiohttp.ClientSession:
        # unsafe=True: the default jar ignores cookies from IP hosts like 127.0.0.1.
        return aiohttp.ClientSession(self.url, cookie_jar=aiohttp.CookieJar(unsafe=True))


@asynccontextmanager
async def serving(loaded: LoadedConfig, runner: Any = None) -> AsyncIterator[Running]:
    """A real App's HTTP side for `loaded`, with `runner` as its container runner (None:
    no runner in this process, as without Docker)."""
    app = App(loaded)
    url = loaded.config.resolved_database_url()
    await upgrade(url)
    app.db = Database(url)
    app.runner = runner
    app._build_adapters()
    app._build_dashboard()
    await app.http.start()
    try:
        yield Running(app)
    finally:
        await app.http.stop()
        await app.db.dispose()


def running(
    tmp_path: Path, password: str | None = PASSWORD, runner: Any = None, **settings: Any
) -> AbstractAsyncContextManager[Running]:
    """A real App's HTTP side (database, login, adapters, dashboard) on 127.0.0.1, its data
    in `tmp_path`, configured by `settings` (as in mercury.yaml) on a free port."""
    config = Config.model_validate(
        {
            "data_dir": str(tmp_path),
            **settings,
            "server": {"port": free_port(), **settings.get("server", {})},
        }
    )
    secrets = Secrets(dashboard_password=SecretStr(password) if password else None)
    return serving(LoadedConfig(config, secrets, None), runner=runner)


async def login(http: aiohttp.ClientSession, next_path: str | None = None) -> str:
    """Log in through the form; the session id from the cookie."""
    form = dict(GOOD) | ({"next": next_path} if next_path else {})
    async with http.post("/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        return resp.cookies[SESSION_COOKIE].value


async def csrf_token(http: aiohttp.ClientSession) -> str:
    """The CSRF token as a page carries it: in <body hx-headers> and the logout form."""
    async with http.get("/overview", allow_redirects=False) as resp:
        assert resp.status == 200
        html = await resp.text()
    match = re.search(r"<body hx-headers='([^']*)'", html)
    assert match, html[:500]
    token = json.loads(match.group(1).replace("&#34;", '"'))["X-CSRF-Token"]
    assert f'name="csrf" value="{token}"' in html
    return str(token)


# --------------------------------------------------------------------------- the HTML


class Node:
    """An element: its tag, attributes (unescaped; a bare attribute is ""), and children
    (elements and text, in document order)."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    def __repr__(self) -> str:
        return f"<{self.tag} {self.attrs}>"

    @property
    def raw_text(self) -> str:
        """The text inside as written, whitespace kept (and each <br> a newline)."""
        return "".join(
            c if isinstance(c, str) else "\n" if c.tag == "br" else c.raw_text
            for c in self.children
        )

    @property
    def text(self) -> str:
        """The text inside with each run of whitespace as one space, none at the ends."""
        return " ".join(self.raw_text.split())

    def walk(self) -> Iterator[Node]:
        """Every element inside, in document order (not this one)."""
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.walk()

    def _matches(self, tag: str, attrs: dict[str, str]) -> bool:
        return self.tag == tag and all(self.attrs.get(_attr(k)) == v for k, v in attrs.items())

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        """Every <tag> inside whose attributes have these exact values (class_ is class)."""
        return [n for n in self.walk() if n._matches(tag, attrs)]

    def maybe(self, tag: str, **attrs: str) -> Node | None:
        """The first such element, or None."""
        return next((n for n in self.walk() if n._matches(tag, attrs)), None)

    def find(self, tag: str, **attrs: str) -> Node:
        """The first such element; there must be one."""
        found = self.maybe(tag, **attrs)
        assert found is not None, f"no <{tag} {attrs}> in <{self.tag} {self.attrs}>"
        return found

    def by_id(self, element_id: str) -> Node:
        """The element with this id; there must be one."""
        found = next((n for n in self.walk() if n.attrs.get("id") == element_id), None)
        assert found is not None, f"no element with id={element_id!r}"
        return found

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()


def _attr(name: str) -> str:
    """A keyword argument's attribute: class_ -> class (for Python keywords)."""
    return name[:-1] if name.endswith("_") else name


# Elements that never have content or an end tag.
VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
}  # fmt: skip
# Elements whose end tag may be left out: a new one closes the open one (<option> in a
# <datalist>, say). Only when that open one is the innermost element.
_CLOSED_BY = {
    "option": {"option"},
    "li": {"li"},
    "dt": {"dt", "dd"},
    "dd": {"dt", "dd"},
    "td": {"td", "th"},
    "th": {"td", "th"},
}


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> Node:
        if self.stack[-1].tag in _CLOSED_BY.get(tag, ()):
            self.stack.pop()
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        return node

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = self._element(tag, attrs)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)  # <rect .../> in SVG: no content

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return
        # An end tag with nothing open to close is ignored, as a browser does.

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    """A page or fragment as a tree; its root (tag "#root") holds the top elements."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


async def get_page(http: aiohttp.ClientSession, path: str, status: int = 200) -> Node:
    """GET `path` (no redirects followed), check the status, and parse the page."""
    async with http.get(path, allow_redirects=False) as resp:
        body = await resp.text()
        assert resp.status == status, body[:2000]
    return parse(body)
