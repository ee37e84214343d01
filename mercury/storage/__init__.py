"""Mercury's storage layer: async SQLAlchemy engine, models, Alembic migrations, repositories.

Callers use `Database`, the `migrate` functions and the repository functions re-exported
here (one module per aggregate: spaces.py, jobs.py, ...; see repo.py); nothing outside
this package writes SQL.
"""

from mercury.storage.db import default_sqlite_url, parse_database_url, safe_url
from mercury.storage.errors import StorageError
from mercury.storage.migrate import (
    current_revision,
    downgrade,
    head_revision,
    is_up_to_date,
    upgrade,
)
from mercury.storage.models import ReplyStatus

# Every repository function and record, from the one list of them in repo.py.
from mercury.storage.repo import *  # noqa: F403
from mercury.storage.repo import __all__ as _repo_names

__all__ = [
    "ReplyStatus",
    "StorageError",
    "current_revision",
    "default_sqlite_url",
    "downgrade",
    "head_revision",
    "is_up_to_date",
    "parse_database_url",
    "safe_url",
    "upgrade",
    *_repo_names,
]
