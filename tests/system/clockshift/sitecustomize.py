"""Shifts this Python process's wall clock by `TEST_CLOCK_SHIFT_S` seconds, for the clock-skew system tests.

Put this folder on `PYTHONPATH` of a `cekura-worker run` and every `time.time()` / `time.time_ns()` in it (the
worker's, Dramatiq's and redis-py's, and those of the worker processes it spawns, which inherit the environment)
reads a clock that is that far off, as on a host whose clock is wrong. The monotonic clock is left alone, as the
kernel does when the wall clock is set. (libfaketime would shift the C library's clocks too, but under it
Python's `time.sleep` fails with EINVAL and `threading.Event.wait` hangs.)
"""

import os
import time

_shift = float(os.environ.get("TEST_CLOCK_SHIFT_S", "0") or 0)
if _shift:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _shift
    time.time_ns = lambda: _time_ns() + int(_shift * 1_000_000_000)
