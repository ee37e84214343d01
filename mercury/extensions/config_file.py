"""Changing `extensions.enabled` in the operator's mercury.yaml, keeping the rest as written.

Operators comment their config, and a YAML dump would drop every comment and reorder
nothing-changed keys. So the edit is textual: the list's own text is replaced with a flow
list (`enabled: [a, b]`), found through the YAML node positions, or the key is inserted.
The result is read back and must equal the old data with only that list changed; when it
does not (an unusual layout), a file without comments is dumped whole instead, and a file
with comments is left alone with an error saying what to write by hand.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


class ConfigEditError(ValueError):
    """The config file could not be changed safely (one line)."""


def _flow(names: list[str]) -> str:
    """A flow list; a name YAML would read as something else ("no", "null") is quoted."""
    items = (name if yaml.safe_load(name) == name else json.dumps(name) for name in names)
    return "[" + ", ".join(items) + "]"


def _node(mapping: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(mapping, yaml.MappingNode):
        return None
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _textual(text: str, names: list[str]) -> str | None:
    """`text` with extensions.enabled set to `names`, editing only that spot, or None."""
    root = yaml.compose(text)
    flow = _flow(names)
    if root is None:
        return f"{text.rstrip()}\nextensions:\n  enabled: {flow}\n".lstrip()
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    extensions = _node(root, "extensions")
    if extensions is None:
        body = text if text.endswith("\n") or not text else text + "\n"
        return f"{body}extensions:\n  enabled: {flow}\n"
    key, section = extensions
    if isinstance(section, yaml.ScalarNode) and section.tag.endswith(":null"):
        start, end = key.end_mark.index, section.end_mark.index
        return f"{text[:start]}:\n  enabled: {flow}{text[end:]}"
    if not isinstance(section, yaml.MappingNode) or not section.value:
        return None
    enabled = _node(section, "enabled")
    if enabled is None:
        first = section.value[0][0]
        at = first.start_mark.index
        if section.flow_style:
            return f"{text[:at]}enabled: {flow}, {text[at:]}"
        indent = " " * first.start_mark.column
        return f"{text[:at]}enabled: {flow}\n{indent}{text[at:]}"
    key, value = enabled
    end = value.end_mark.index
    if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
        end = value.value[-1].end_mark.index  # a block list's end mark runs on to the next key
    return f"{text[: key.end_mark.index]}: {flow}{text[end:]}"


def with_enabled(text: str, names: list[str]) -> str:
    """The config file's text with `extensions.enabled` = `names` (ConfigEditError when
    that cannot be done without losing the operator's comments)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigEditError(f"the config file is not valid YAML ({exc})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigEditError("the config file does not hold a mapping of keys")
    want: dict[str, Any] = copy.deepcopy(data)
    section = want.get("extensions")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigEditError("extensions: expected a mapping of keys")
    # A new mapping: a YAML alias shared with another key must not change that key too.
    want["extensions"] = {**section, "enabled": list(names)}
    edited = _textual(text, names)
    if edited is not None:
        try:
            if yaml.safe_load(edited) == want:
                return edited
        except yaml.YAMLError:
            pass
    if "#" not in text:
        return yaml.safe_dump(want, sort_keys=False, allow_unicode=True)
    raise ConfigEditError(
        f"cannot change extensions.enabled without losing the file's comments: "
        f"set it by hand to {_flow(names)}"
    )


def write_enabled(path: Path, names: list[str]) -> bool:
    """Set `extensions.enabled` in the config file at `path`; False when it already was.
    The file is replaced atomically (same folder, same mode)."""
    text = path.read_text(encoding="utf-8")
    new = with_enabled(text, names)
    if new == text:
        return False
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


__all__ = ["ConfigEditError", "with_enabled", "write_enabled"]
