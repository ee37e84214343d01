"""How one container run ended: the one vocabulary of the runner, the pipeline and storage.

The runner decides it (sandbox), the run executor turns it into a job status and a notice
(pipeline), and the runs table stores it (storage). It lives in core so that sandbox need
not import storage, nor storage sandbox.
"""

from __future__ import annotations

from enum import StrEnum


class RunReason(StrEnum):
    OK = "ok"
    ERROR = "error"  # the agent reported ok:false (or wrote an unreadable result)
    CRASHED = "crashed"  # exited without a result, or could not be started
    OOM = "oom"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    # Stopped because the space outgrew disk.space_size (watched spaces) or the host's
    # free disk fell below disk.min_free while it ran.
    DISK = "disk"
    # Stopped because a spending cap (budgets.*) was reached: the host's model proxy
    # refused its next model call.
    BUDGET = "budget"
