"""Mercury: a self-hosted bot host that answers each chat message in a fresh container."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mercury")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
