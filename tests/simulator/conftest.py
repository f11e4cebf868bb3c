"""Fixtures of the simulator's operation tests: one simulator per module and a client that resets it per test.

Named apart from `test_simulator.py`'s own module fixtures (`sim`, `client`, `clean_sim`), which it keeps.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from simulator import SimConfig, SimulatorHandle, start_in_thread
from tests.simulator.sim_api import OPS_DURATION, OPS_KEY, SSL_CONTEXT, Api


@pytest.fixture(scope="module")
def ops() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(SimConfig(duration_s=OPS_DURATION, seed=11))
    yield handle
    handle.stop()


@pytest.fixture
def api(ops: SimulatorHandle) -> Iterator[Api]:
    ops.clear_faults()
    ops.configure(
        duration_s=OPS_DURATION,
        polls_to_complete=None,
        rate_limit_rps=0,
        durations=None,
        webhook_url=None,
        webhook_secret=None,
    )
    ops.reset()
    with httpx.Client(base_url=ops.url, headers={"X-CEKURA-API-KEY": OPS_KEY}, timeout=5, verify=SSL_CONTEXT) as c:
        yield Api(ops, c)
