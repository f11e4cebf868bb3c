"""A known cost, for checking what `python -m bench.tracing --calibrate-us N` reads: imported at start-up by every
Python process of the calibrating variant's workers (this directory leads their PYTHONPATH), it makes each Dramatiq
message spend `BENCH_BUSY_US` microseconds more of its thread's CPU, in Python, before it is processed. The
benchmark should then read about N us times messages per poll more CPU per poll than the same code without it."""

from __future__ import annotations

import os
import time
from typing import Any

_BUSY_S = float(os.environ.get("BENCH_BUSY_US", "0")) / 1e6

if _BUSY_S > 0:
    from dramatiq.worker import WorkerThread as _Thread

    _process = _Thread.process_message

    def _process_message(self: Any, message: Any) -> Any:
        until = time.thread_time() + _BUSY_S
        while time.thread_time() < until:
            pass
        return _process(self, message)

    _Thread.process_message = _process_message
