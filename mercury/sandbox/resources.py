"""The repository's resources/ folder: profiles and skills mounted read-only into runs.

The runner mounts it at hardening.RESOURCES_MOUNT; a clone without it runs with the
agent's built-in minimal prompt.
"""

from __future__ import annotations

from pathlib import Path


def resources_dir() -> Path | None:
    """The repository's resources/ (profiles, skills), or None when it is not there."""
    path = Path(__file__).resolve().parents[2] / "resources"
    return path if path.is_dir() else None
