"""Delays: when to poll next, when to retry after a transient failure, and how to read `Retry-After`."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from config.settings import Settings

#: The longest `Retry-After` honoured, in seconds; a larger value is capped (the job deadline still applies).
DEFAULT_MAX_RETRY_AFTER_S = 600.0


def capped_exponential(initial: float, factor: float, step: int, cap: float) -> float:
    """`min(cap, initial * factor ** step)`, without overflowing however large `step` grows."""
    if factor <= 1.0 or initial >= cap:
        return min(cap, initial)
    steps_to_cap = math.ceil(math.log(cap / initial, factor))
    return min(cap, initial * factor ** min(max(0, step), steps_to_cap))


def poll_delay(poll: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds to wait before the `poll`-th progress poll (1-based): exponential, capped, with jitter."""
    base = capped_exponential(
        settings.cekura_poll_initial_s, settings.cekura_poll_factor, poll - 1, settings.cekura_poll_max_s
    )
    return _jittered(base, settings.cekura_poll_jitter, rng)


def retry_delay(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before retrying after the `attempt`-th consecutive transient failure (1-based), with jitter."""
    base = capped_exponential(settings.cekura_retry_initial_s, 2.0, attempt - 1, settings.cekura_retry_max_s)
    return _jittered(base, 0.2, rng)


def _jittered(base: float, jitter: float, rng: random.Random | None) -> float:
    if jitter <= 0:
        return base
    r = (rng or random).uniform(-jitter, jitter)
    return max(0.0, base * (1 + r))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), DEFAULT_MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # (a year past datetime's: OverflowError)
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), DEFAULT_MAX_RETRY_AFTER_S)
