"""How to run one simulator (`SimConfig`) and the checks on the job-timing settings that can change while it runs."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from simulator.faults import Faults


@dataclass
class SimConfig:
    """How to run the simulator: where to listen, the API key it demands, job timing, faults and the seed."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "sim-key"
    duration_s: float = 2.0
    polls_to_complete: int | None = None
    faults: Faults = field(default_factory=Faults)
    rate_limit_rps: float = 0
    seed: int = 0
    #: Serve HTTPS with this context instead of plain HTTP (in-process use, for the client's TLS tests).
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        check_timing(self.duration_s, self.polls_to_complete, self.rate_limit_rps)


def check_timing(duration_s: Any, polls_to_complete: Any, rate_limit_rps: Any) -> None:
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not duration_s >= 0:
        raise ValueError(f"duration_s must be a number >= 0, got {duration_s!r}")
    if polls_to_complete is not None and (
        isinstance(polls_to_complete, bool) or not isinstance(polls_to_complete, int) or polls_to_complete < 1
    ):
        raise ValueError(f"polls_to_complete must be None or an integer >= 1, got {polls_to_complete!r}")
    if isinstance(rate_limit_rps, bool) or not isinstance(rate_limit_rps, int | float) or not rate_limit_rps >= 0:
        raise ValueError(f"rate_limit_rps must be a number >= 0 (0 = off), got {rate_limit_rps!r}")
