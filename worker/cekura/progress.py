"""When to poll next from how far an operation says it is: counts of finished parts (issue 21).

Some progress answers count what is done: an evaluator run's `completed_runs_count` of `total_runs_count`,
a generation's `completed_scenarios` of `total_scenarios`. A kind that declares a progress rule
(`JobKind.progress_of`) has the `Progress` read from each running answer handed to `PollingBook.stretch`; this
module turns it, with the time since the start, into the earliest moment the operation can plausibly be over, and
the next poll waits until then (never beyond the kind's `max_s`) instead of coming at the schedule's cadence.

The model, and nothing more is assumed: the parts left finish one after another at the pace seen so far, at
random (a Poisson process whose rate is unknown). Having seen `done` of `total` parts finish in `elapsed` seconds,
with Jeffreys' prior on the rate (as if half a part had finished), the time the `left = total - done` parts still
need, R, has R / (R + elapsed) ~ Beta(left, done + 1/2): few parts seen means an uncertain pace, few parts left
an uncertain end. The next poll is due at the `DEFAULT_RISK` quantile of R: the job ends before it with
probability 2 % as judged from its own progress. So polls are sparse while many parts are left, and as soon as the
end could be near, the schedule in use (learned or declared) takes over again:

- the interval is never shorter than the schedule's (progress only stretches it) nor longer than `max_s`;
- no stretch for fewer than `DEFAULT_MIN_TOTAL` parts (one part's count changes only when the job ends), once
  every part is counted (the operation is in a last phase the counts say nothing about), nor right at the start.

Nothing is stored: the answer and the elapsed time are all it needs, so a poll costs no Redis call more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The chance, judged from the pace so far, that every part left ends before the next poll.
DEFAULT_RISK = 0.02
#: Jeffreys' prior on the pace: as if this many parts had finished (so a job with none done yet is covered too).
DEFAULT_PRIOR_PARTS = 0.5
#: Fewer parts than this say nothing about the pace.
DEFAULT_MIN_TOTAL = 2
#: Continued-fraction terms and bisection steps for the incomplete beta function and its inverse.
DEFAULT_CF_TERMS = 300
DEFAULT_SOLVE_STEPS = 40

_TINY = 1e-300


@dataclass(frozen=True, slots=True)
class Progress:
    """`done` of `total` parts of an operation finished (runs, generated evaluators)."""

    done: int
    total: int


def stretched_delay(base_s: float, progress: Progress | None, elapsed_s: float, max_s: float) -> float:
    """The next poll's delay: `base_s` (the schedule's) stretched, up to `max_s`, to the earliest plausible end of
    an operation at `progress` after `elapsed_s` seconds; `base_s` itself when the progress says nothing."""
    if base_s >= max_s or not _informative(progress, elapsed_s):
        return base_s
    assert progress is not None
    left, seen = progress.total - progress.done, progress.done + DEFAULT_PRIOR_PARTS
    if _ends_within(max_s, left, seen, elapsed_s) <= DEFAULT_RISK:
        return max_s
    if _ends_within(base_s, left, seen, elapsed_s) >= DEFAULT_RISK:
        return base_s
    low, high = base_s, max_s  # P(end within low) < risk < P(end within high)
    for _ in range(DEFAULT_SOLVE_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if _ends_within(mid, left, seen, elapsed_s) < DEFAULT_RISK else (low, mid)
        if high - low <= 1e-3 * base_s:
            break
    return low


def earliest_end_s(progress: Progress, elapsed_s: float, risk: float = DEFAULT_RISK) -> float:
    """Seconds from now before which the operation ends with probability `risk` (the model above); 0 when its
    progress says nothing."""
    if not _informative(progress, elapsed_s):
        return 0.0
    x = _beta_quantile(progress.total - progress.done, progress.done + DEFAULT_PRIOR_PARTS, risk)
    return elapsed_s * x / (1 - x)


def _informative(progress: Progress | None, elapsed_s: float) -> bool:
    return (
        progress is not None
        and progress.total >= DEFAULT_MIN_TOTAL
        and 0 <= progress.done < progress.total
        and elapsed_s > 0
        and math.isfinite(elapsed_s)
    )


def _ends_within(h: float, left: int, seen: float, elapsed_s: float) -> float:
    """P(R <= h): R / (R + elapsed) ~ Beta(left, seen)."""
    return incomplete_beta(left, seen, h / (h + elapsed_s))


def _beta_quantile(a: float, b: float, p: float) -> float:
    low, high = 0.0, 1.0
    for _ in range(DEFAULT_SOLVE_STEPS + 10):
        mid = (low + high) / 2
        low, high = (mid, high) if incomplete_beta(a, b, mid) < p else (low, mid)
    return low


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (a, b > 0), by Lentz's continued fraction."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def _continued_fraction(a: float, b: float, x: float) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, DEFAULT_CF_TERMS + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return h
