"""Cekura API simulator: serves the asynchronous Cekura operations over loopback HTTP, with fault injection.

No machine here reaches api.cekura.ai, so the demo, the integration tests and the benchmarks run against this
simulator instead; it follows `cekura-openapi.json` (status codes, response shapes, error bodies) and steers job
outcomes through the conventions documented in `simulator.jobs` (and, for the operations added later, in the
modules it points to).
"""

from simulator.cli import main
from simulator.config import SimConfig
from simulator.faults import Faults
from simulator.server import SimulatorHandle, run, start_in_thread

__all__ = ["Faults", "SimConfig", "SimulatorHandle", "main", "run", "start_in_thread"]
