"""`serve`: start an App, wait for SIGINT/SIGTERM, stop it within a bound.

What `mercury run` and `mercury worker` run; apart from `App`, which tests start and stop
directly without signals.
"""

from __future__ import annotations

import asyncio
import signal

from mercury.app import RUN_GRACE_S, SHUTDOWN_TIMEOUT_S, App
from mercury.logging import get_logger

log = get_logger("mercury.app")


async def serve(app: App, stop: asyncio.Event | None = None) -> None:
    """Start `app`, wait for SIGINT/SIGTERM (or `stop`), then shut down within a bound."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, stop, sig)
    try:
        try:
            await app.start()
        except BaseException:
            await app.stop()
            raise
        await stop.wait()
        log.info("shutting down", grace_s=RUN_GRACE_S, timeout_s=SHUTDOWN_TIMEOUT_S)
        try:
            await asyncio.wait_for(app.stop(), timeout=SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            log.error("shutdown timed out; exiting anyway", timeout_s=SHUTDOWN_TIMEOUT_S)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        # A second signal means "now": the operator is not waiting for a clean stop.
        log.warning("second signal, exiting immediately", signal=sig.name)
        raise SystemExit(130)
    log.info("signal received", signal=sig.name)
    stop.set()
