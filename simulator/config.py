"""How to run one simulator (`SimConfig`) and the checks on the job-timing settings that can change while it runs.

`durations` maps a job kind (`simulator.model.KINDS`) to `[median_s, sigma]`: a job of that kind started while it
is set runs `median_s * exp(sigma * N(0, 1))` seconds, drawn from a RNG seeded with `seed` (log-normal, as real
Cekura operations are: most finish near the median, a few take many times longer). Kinds it does not name run
`duration_s`; `polls_to_complete`, when set, wins over both.
"""

from __future__ import annotations

import math
import ssl
from dataclasses import dataclass, field
from typing import Any

from simulator.faults import Faults
from simulator.model import KINDS

#: Per-kind log-normal job durations: kind -> (median seconds, sigma of the underlying normal).
Durations = dict[str, tuple[float, float]]
#: Above this a draw's spread (exp of ten standard deviations of it) says nothing a benchmark could use.
_MAX_SIGMA = 10


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
    #: Log-normal durations per job kind, `{kind: [median_s, sigma]}` (see the module docstring); None: off.
    durations: Durations | None = None
    #: Serve HTTPS with this context instead of plain HTTP (in-process use, for the client's TLS tests).
    ssl_context: ssl.SSLContext | None = None
    #: Where result webhooks are POSTed when an evaluator result ends (`simulator/webhooks.py`); None: none are.
    webhook_url: str | None = None
    #: Sent as the `X-CEKURA-SECRET` header of every webhook; None: no header.
    webhook_secret: str | None = None

    def __post_init__(self) -> None:
        check_timing(self.duration_s, self.polls_to_complete, self.rate_limit_rps)
        self.durations = check_durations(self.durations)
        check_url(self.webhook_url)
        check_secret(self.webhook_secret)


def check_url(url: Any) -> str | None:
    """A webhook URL setting: an http(s) URL or None."""
    if url is None:
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook_url must be an http(s) URL or null, got {url!r}")
    return url


def check_secret(secret: Any) -> str | None:
    """A webhook secret setting: a string or None."""
    if secret is not None and not isinstance(secret, str):
        raise ValueError(f"webhook_secret must be a string or null, got {secret!r}")
    return secret


def check_timing(duration_s: Any, polls_to_complete: Any, rate_limit_rps: Any) -> None:
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float) or not duration_s >= 0:
        raise ValueError(f"duration_s must be a number >= 0, got {duration_s!r}")
    if polls_to_complete is not None and (
        isinstance(polls_to_complete, bool) or not isinstance(polls_to_complete, int) or polls_to_complete < 1
    ):
        raise ValueError(f"polls_to_complete must be None or an integer >= 1, got {polls_to_complete!r}")
    if isinstance(rate_limit_rps, bool) or not isinstance(rate_limit_rps, int | float) or not rate_limit_rps >= 0:
        raise ValueError(f"rate_limit_rps must be a number >= 0 (0 = off), got {rate_limit_rps!r}")


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value > 0


def check_durations(value: Any) -> Durations | None:
    """Validate a `durations` setting and return it as `{kind: (median_s, sigma)}`; ValueError names the problem."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"durations must be an object mapping job kinds to [median_s, sigma], got {value!r}")
    out: Durations = {}
    for kind, pair in value.items():
        if kind not in KINDS:
            raise ValueError(f"durations: unknown job kind {kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"durations[{kind!r}] must be [median_s, sigma], got {pair!r}")
        median, sigma = pair
        if not _positive_number(median):
            raise ValueError(f"durations[{kind!r}]: median_s must be a number > 0, got {median!r}")
        if isinstance(sigma, bool) or not (sigma == 0 or _positive_number(sigma)) or sigma > _MAX_SIGMA:
            raise ValueError(f"durations[{kind!r}]: sigma must be a number >= 0 and <= {_MAX_SIGMA}, got {sigma!r}")
        out[kind] = (float(median), float(sigma))
    return out
