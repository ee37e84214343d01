"""The agent runtime's tests share Mercury's guards: no proxy or developer MERCURY_* / model
key from the environment may reach a test (see tests/conftest.py)."""

from tests.conftest import _clean_mercury_env, _no_proxies

__all__ = ["_clean_mercury_env", "_no_proxies"]
