"""Fault injection for the Cekura API simulator, so the worker's retry, back-off and timeout paths get exercised.

Faults apply only to the Cekura API routes, the cancel and answer routes included, never to the `/_sim/` control routes.
One seeded random draw per request picks at most one fault kind, in this order of bands: drop, hang, 5xx error,
429, malformed body, unexpected status word (progress routes only), lost answer (POST routes only). `latency_ms` is
added to every answer on those routes, on top of any fault.
A hung or delayed request is still processed when it arrives and only its answer waits, so a start call that hangs
past the client's timeout has created its job, as on a real API that commits before answering. Dropped, 5xx, 429 and
malformed answers never reach the job (no job is started, no poll is counted); an unexpected status word does not
count as a poll either.
A **lost answer** (`lost_start_rate`, counted as `lost_start`) is the other case: the POST is processed first (a
`run_scenarios` creates its result, any start creates its job, a cancel cancels), then its answer is lost, in turn:
the connection is closed unanswered, a proxy's 502 Bad Gateway, or a hang of `hang_s` ending in a 504 Gateway
Timeout. The started job is in `/_sim/polls` and `started_by_key`, and a run's result in `GET results/?search=`.

The rate limiter (`rate_limit_rps`) is separate: it is not random, it counts admitted requests in a sliding second,
and its 429s carry the same alternating Retry-After as injected ones. The `webhook_*` settings are not drawn per
request either: they steer result webhooks (`simulator/webhooks.py`).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from email.utils import formatdate
from typing import Any

NONE = ""
DROP = "drop"
HANG = "hang"
ERROR = "error"
RATE_429 = "429"
MALFORMED = "malformed"
UNKNOWN_STATUS = "unknown_status"
RATE_LIMIT = "rate_limit"
LOST_START = "lost_start"

FAULT_KINDS = (DROP, HANG, ERROR, RATE_429, MALFORMED, UNKNOWN_STATUS, RATE_LIMIT, LOST_START)
#: How a lost answer is lost, in turn: closed unanswered, a proxy's 502, a hang ending in a 504.
LOST_WAYS = (DROP, "502", "504")

UNEXPECTED_STATUS = "paused"

_RATE_FIELDS = (
    "error_rate",
    "rate_429",
    "hang_rate",
    "drop_rate",
    "malformed_rate",
    "unknown_status_rate",
    "lost_start_rate",
)
_SHARE_FIELDS = (*_RATE_FIELDS, "webhook_loss_rate", "webhook_duplicate_rate")


@dataclass(frozen=True)
class Faults:
    """Which faults the simulator injects; every rate is a share of requests in [0, 1] and all default to off."""

    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    latency_ms: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 30.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    unknown_status_rate: float = 0.0
    #: Share of POSTs processed and then answered with nothing usable (see the module docstring).
    lost_start_rate: float = 0.0
    #: Share of result webhooks never sent.
    webhook_loss_rate: float = 0.0
    #: Share of result webhooks sent twice.
    webhook_duplicate_rate: float = 0.0
    #: Seconds between a result's end and its webhook; drawn uniformly up to `webhook_delay_max_s` when that is more.
    webhook_delay_s: float = 0.0
    webhook_delay_max_s: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value!r}")
            if f.name in _SHARE_FIELDS and value > 1:
                raise ValueError(f"{f.name} is a share of requests and must be <= 1, got {value!r}")

    def updated(self, **changes: Any) -> Faults:
        """Return a copy with the given fields changed; unknown names raise ValueError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @property
    def any_random(self) -> bool:
        return any(getattr(self, name) > 0 for name in _RATE_FIELDS)


class FaultInjector:
    """Draws the fault for each operation request from a seeded `random.Random` so runs are reproducible."""

    def __init__(self, faults: Faults, seed: int) -> None:
        self.seed = seed
        self.counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._rng = random.Random(seed)
        self._error_turn = 0
        self._retry_after_turn = 0
        self._malformed_turn = 0
        self._lost_turn = 0
        self.faults = faults
        self.latency_s = 0.0
        self.active = False
        self._bands: tuple[float, ...] = (0.0,) * 7
        self.set(faults)

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self.latency_s = faults.latency_ms / 1000.0
        self.active = faults.any_random
        acc = 0.0
        bands: list[float] = []
        for rate in (
            faults.drop_rate,
            faults.hang_rate,
            faults.error_rate,
            faults.rate_429,
            faults.malformed_rate,
            faults.unknown_status_rate,
            faults.lost_start_rate,
        ):
            acc += rate
            bands.append(acc)
        self._bands = tuple(bands)

    def reset(self) -> None:
        """Reseed and clear the counters so a reset simulator replays the same fault sequence."""
        self._rng = random.Random(self.seed)
        self._error_turn = 0
        self._retry_after_turn = 0
        self._malformed_turn = 0
        self._lost_turn = 0
        self.counts = dict.fromkeys(FAULT_KINDS, 0)

    def decide(self, is_progress: bool, is_post: bool = False) -> str:
        """Pick this request's fault kind (NONE for a normal answer); call only when `active`."""
        r = self._rng.random()
        drop, hang, error, r429, malformed, unknown, lost = self._bands
        if r >= unknown:
            if r < lost and is_post:
                self.counts[LOST_START] += 1
                return LOST_START
            return NONE
        if r < drop:
            kind = DROP
        elif r < hang:
            kind = HANG
        elif r < error:
            kind = ERROR
        elif r < r429:
            kind = RATE_429
        elif r < malformed:
            kind = MALFORMED
        elif is_progress:
            kind = UNKNOWN_STATUS
        else:
            return NONE
        self.counts[kind] += 1
        return kind

    def next_error(self) -> tuple[int, bytes, bytes]:
        """The next 5xx answer as (status, content type, body), rotating 500, 502, 503."""
        turn = self._error_turn % 3
        self._error_turn += 1
        if turn == 0:
            return 500, b"application/json", b'{"detail": "A server error occurred."}'
        if turn == 1:
            return 502, b"text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        return 503, b"application/json", b'{"detail": "Service temporarily unavailable, try again later."}'

    def next_lost(self) -> str:
        """How the next lost answer is lost: one of `LOST_WAYS`, in turn."""
        way = LOST_WAYS[self._lost_turn % len(LOST_WAYS)]
        self._lost_turn += 1
        return way

    def next_retry_after(self) -> str:
        """The next Retry-After value, alternating delta-seconds and HTTP-date forms (both at least the delay)."""
        delay = self.faults.retry_after_s
        turn = self._retry_after_turn
        self._retry_after_turn += 1
        if turn % 2 == 0:
            return str(math.ceil(delay))
        return formatdate(math.ceil(time.time() + delay), usegmt=True)

    def next_malformed(self) -> bytes:
        """A 200 body that is not valid JSON, alternating a truncated object and an HTML page."""
        turn = self._malformed_turn
        self._malformed_turn += 1
        if turn % 2 == 0:
            return b'{"status": "in_progress", "progress_id": "'
        return b"<html><body>Temporarily unavailable</body></html>"


class RequestWindow:
    """Counts operation requests in a sliding one-second window: the peak rate seen and the rate limiter."""

    def __init__(self) -> None:
        self._arrivals: deque[float] = deque()
        self._admitted: deque[float] = deque()
        self.max_rps_1s = 0

    def reset(self) -> None:
        self._arrivals.clear()
        self._admitted.clear()
        self.max_rps_1s = 0

    def arrive(self, now: float) -> None:
        arrivals = self._arrivals
        cutoff = now - 1.0
        while arrivals and arrivals[0] <= cutoff:
            arrivals.popleft()
        arrivals.append(now)
        if len(arrivals) > self.max_rps_1s:
            self.max_rps_1s = len(arrivals)

    def admit(self, now: float, limit_rps: float) -> bool:
        """True when fewer than `limit_rps` requests were admitted in the last second (and records this one)."""
        admitted = self._admitted
        cutoff = now - 1.0
        while admitted and admitted[0] <= cutoff:
            admitted.popleft()
        if len(admitted) >= limit_rps:
            return False
        admitted.append(now)
        return True
