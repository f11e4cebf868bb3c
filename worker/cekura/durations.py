"""How long a kind's jobs take, as a small histogram, and the polling schedule that distribution calls for.

Pure arithmetic, no Redis (`worker/cekura/polling.py` stores the histograms and serves the schedules). The model:

- Durations (start answered -> Cekura terminal) fall into `DEFAULT_BUCKETS` fixed buckets, log-spaced from
  `DEFAULT_LOWEST_S` to `DEFAULT_HIGHEST_S`; within a bucket the density is taken as flat. A job is seen only
  between two polls, so each observation is an interval; `spread` shares its weight over the buckets the interval
  covers in proportion to what the histogram already says (one step of Turnbull's estimator, with a flat prior).
- The schedule: at each poll time t the next interval h solves `h * P(finish within h | running at t) = K`, the
  discrete form of h ∝ 1/sqrt(hazard), which minimises expected calls for a given mean delay. K is the largest
  that keeps both the mean and the p95 detection delay, computed on the learned distribution, within the kind's
  declared schedule's (with its intervals scaled by `target`, CEKURA_LEARN_DELAY_TARGET, 1 by default); if that
  saves under `DEFAULT_MIN_SAVING` of that schedule's calls, the declared schedule stays.
- Limits hold whatever was learned: every interval within [min_s, max_s]; past the learned p99 never longer than
  the declared schedule's interval there; past `DEFAULT_FAR_TAIL` x the learned p99.9, `max_s`.

Measured cost: building one schedule (calibration included) takes a few tens of ms, so `PollingBook` rebuilds a
kind's at most every CEKURA_LEARN_REFRESH_S and only when its histogram changed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

#: Upper edge of the first bucket, seconds (a compressed benchmark runs sub-second jobs).
DEFAULT_LOWEST_S = 0.01
#: Lower edge of the last bucket, seconds; longer durations count in it.
DEFAULT_HIGHEST_S = 86_400.0
#: Buckets per kind: the first [0, lowest), log-spaced ones (about 29 % wide), the last [highest, 2 x highest).
DEFAULT_BUCKETS = 64
#: Each observation is smoothed over its neighbours with this binomial kernel (about one bucket's spread).
DEFAULT_KERNEL = (1.0, 4.0, 6.0, 4.0, 1.0)
#: A smoothed bucket holding less than this share of the weight counts as empty (it would stretch the support).
DEFAULT_NEGLIGIBLE = 1e-4
#: The delay quantile kept within the declared schedule's.
DEFAULT_QUANTILE = 0.95
#: Past this many times the learned p99.9, every interval is `max_s`: a job far longer than any seen.
DEFAULT_FAR_TAIL = 2.0
#: A learned schedule must save at least this share of the declared one's expected calls to be used: below it,
#: the estimate's own error could turn the saving into a loss.
DEFAULT_MIN_SAVING = 0.1
#: Bisection steps when calibrating K, and when solving for an interval or a delay quantile.
DEFAULT_CALIBRATION_STEPS = 14
DEFAULT_SOLVE_STEPS = 14

_RATIO = (DEFAULT_HIGHEST_S / DEFAULT_LOWEST_S) ** (1 / (DEFAULT_BUCKETS - 2))
#: Bucket edges: EDGES[i] <= duration < EDGES[i + 1] falls in bucket i.
EDGES: tuple[float, ...] = (
    0.0,
    *(DEFAULT_LOWEST_S * _RATIO**i for i in range(DEFAULT_BUCKETS - 1)),
    2 * DEFAULT_HIGHEST_S,
)


def bucket_of(seconds: float) -> int:
    """The bucket a duration falls in (the last one for anything at or past `DEFAULT_HIGHEST_S`)."""
    return min(max(bisect_right(EDGES, seconds) - 1, 0), DEFAULT_BUCKETS - 1)


@dataclass(frozen=True, slots=True)
class Limits:
    """A kind's declared schedule with every field resolved: `initial_s`, x `factor` per poll up to `max_s`; no
    learned interval shorter than `min_s` nor longer than `max_s`."""

    initial_s: float
    factor: float
    max_s: float
    min_s: float

    def declared_interval(self, poll: int) -> float:
        """The declared interval before the `poll`-th poll (1-based)."""
        if self.factor <= 1.0 or self.initial_s >= self.max_s:
            return min(self.initial_s, self.max_s)
        steps = min(max(poll - 1, 0), math.ceil(math.log(self.max_s / self.initial_s, self.factor)))
        return min(self.max_s, self.initial_s * self.factor**steps)

    def declared_times(self, horizon_s: float) -> list[float]:
        """Poll times (seconds after start) of the declared schedule, up to the first at or past `horizon_s`."""
        times, t, poll = [], 0.0, 1
        while t < horizon_s:
            t += self.declared_interval(poll)
            times.append(t)
            poll += 1
        return times


class Distribution:
    """A kind's duration distribution from its histogram: flat density within each bucket, smoothed."""

    def __init__(self, weights: Sequence[float]) -> None:
        smoothed = [0.0] * DEFAULT_BUCKETS
        half = len(DEFAULT_KERNEL) // 2
        for i, w in enumerate(weights):
            if w <= 0:
                continue
            taps = list(zip(range(i - half, i + half + 1), DEFAULT_KERNEL, strict=True))
            norm = sum(k for j, k in taps if 0 <= j < DEFAULT_BUCKETS)
            for j, k in taps:
                if 0 <= j < DEFAULT_BUCKETS:
                    smoothed[j] += w * k / norm
        total = sum(smoothed)
        if total <= 0:
            raise ValueError("an empty histogram has no distribution")
        smoothed = [w if w >= DEFAULT_NEGLIGIBLE * total else 0.0 for w in smoothed]
        total = sum(smoothed)
        self.total = sum(w for w in weights if w > 0)
        self.density = [w / total / (EDGES[i + 1] - EDGES[i]) for i, w in enumerate(smoothed)]
        self.cum = [0.0]  # F at each edge
        self.moment = [0.0]  # ∫ u dF(u) up to each edge
        for i, w in enumerate(smoothed):
            self.cum.append(self.cum[-1] + w / total)
            self.moment.append(self.moment[-1] + w / total * (EDGES[i] + EDGES[i + 1]) / 2)
        self.end = EDGES[max(i for i, w in enumerate(smoothed) if w > 0) + 1]

    def cdf(self, t: float) -> float:
        """P(duration <= t)."""
        if t >= self.end:
            return 1.0
        if t <= 0:
            return 0.0
        i = bisect_right(EDGES, t) - 1
        return self.cum[i] + self.density[i] * (t - EDGES[i])

    def first_moment(self, t: float) -> float:
        """∫ u dF(u) over [0, t]."""
        if t >= self.end:
            return self.moment[-1]
        if t <= 0:
            return 0.0
        i = bisect_right(EDGES, t) - 1
        return self.moment[i] + self.density[i] * (t * t - EDGES[i] ** 2) / 2

    def quantile(self, p: float) -> float:
        """The duration below which a share `p` of jobs end."""
        i = min(max(bisect_left(self.cum, p) - 1, 0), DEFAULT_BUCKETS - 1)
        if self.density[i] <= 0:
            return EDGES[i + 1]
        return min(EDGES[i + 1], EDGES[i] + (p - self.cum[i]) / self.density[i])


def spread(low_s: float, high_s: float, prior: Distribution | None = None) -> dict[int, float]:
    """One job's unit weight over the buckets of [low_s, high_s], the interval it ended in.

    Each bucket gets its overlap with the interval times (the history's density of jobs there + a flat density of
    one job over the interval): what the history says, where it says anything, else evenly in time.
    """
    low = max(0.0, low_s)
    high = max(low, high_s)
    if high - low <= 1e-9:
        return {bucket_of(high): 1.0}
    flat = 1.0 / (high - low)
    shares: dict[int, float] = {}
    for i in range(bucket_of(low), bucket_of(high) + 1):
        overlap = min(high, EDGES[i + 1]) - max(low, EDGES[i])
        if overlap > 0:
            density = prior.density[i] * prior.total if prior is not None and EDGES[i] < prior.end else 0.0
            shares[i] = overlap * (density + flat)
    total = sum(shares.values())
    return {i: share / total for i, share in shares.items()}


@dataclass(frozen=True, slots=True)
class Cost:
    """What a schedule costs on a distribution: expected progress calls per job, mean and p95 detection delay."""

    calls: float
    mean_delay_s: float
    p95_delay_s: float


def cost(times: Sequence[float], dist: Distribution, max_mean_s: float = math.inf) -> Cost:
    """Expected calls and delays of polling at `times` (seconds after start) for durations drawn from `dist`
    (the p95 is not computed, and reported infinite, when the mean delay is over `max_mean_s`)."""
    calls = mean = 0.0
    previous = 0.0
    intervals: list[tuple[float, float]] = []
    for t in times:
        before = dist.cdf(previous)
        if before >= 1.0:
            break
        calls += 1.0 - before
        mean += t * (dist.cdf(t) - before) - (dist.first_moment(t) - dist.first_moment(previous))
        intervals.append((previous, t))
        previous = t
    if previous < dist.end:  # the schedule ended first: count the rest as caught at the end of the support
        calls += 1.0 - dist.cdf(previous)
        mean += dist.end * (1.0 - dist.cdf(previous)) - (dist.first_moment(dist.end) - dist.first_moment(previous))
        intervals.append((previous, dist.end))

    if mean > max_mean_s:
        return Cost(calls, mean, math.inf)

    starts = [(a, b, dist.cdf(a)) for a, b in intervals]
    budget = 1 - DEFAULT_QUANTILE

    def late(delay: float) -> bool:  # P(detection delay > delay) over the budget?
        share = 0.0
        for a, b, fa in starts:
            if b - a > delay:
                share += max(0.0, dist.cdf(b - delay) - fa)
                if share > budget:
                    return True
        return False

    low, high = 0.0, max((b - a for a, b in intervals), default=0.0)
    for _ in range(DEFAULT_SOLVE_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if late(mid) else (low, mid)
    return Cost(calls, mean, high)


def learned_times(dist: Distribution, k: float, limits: Limits) -> list[float]:
    """Poll times over the distribution's support where each interval h solves h * P(end within h | running) = k,
    within the limits (past the support, `Schedule.delay_after` goes on with the tail rules)."""
    lo, hi = min(limits.min_s, limits.initial_s), limits.max_s
    p99 = dist.quantile(0.99)
    declared = limits.declared_times(dist.end)
    times: list[float] = []
    t = 0.0
    while t < dist.end:
        base = dist.cdf(t)
        alive = 1.0 - base
        if alive <= 0 or hi * (dist.cdf(t + hi) - base) < k * alive:
            h = hi
        elif lo * (dist.cdf(t + lo) - base) >= k * alive:
            h = lo
        else:
            a, b = lo, hi
            for _ in range(DEFAULT_SOLVE_STEPS):
                mid = (a + b) / 2
                a, b = (mid, b) if mid * (dist.cdf(t + mid) - base) < k * alive else (a, mid)
            h = b
        if t >= p99:  # in the tail the history is thin: never slower than the declared schedule here
            h = min(h, limits.declared_interval(bisect_right(declared, t) + 1))
        t += max(h, lo)
        times.append(t)
    return times


@dataclass(frozen=True, slots=True)
class Schedule:
    """The poll times a kind uses: learned ones up to the end of the learned support, then the declared intervals
    until `far_s`, then `max_s`; or (`times` None) the declared schedule."""

    times: tuple[float, ...] | None
    limits: Limits
    far_s: float = 0.0
    learned: Cost | None = None
    declared: Cost | None = None

    def delay_after(self, elapsed_s: float, poll: int) -> float:
        """Seconds from `elapsed_s` to the next poll (the `poll`-th), without jitter."""
        limits = self.limits
        if self.times is None:
            return limits.declared_interval(poll)
        floor = min(limits.min_s, limits.initial_s)
        i = bisect_right(self.times, elapsed_s)
        if i < len(self.times) and self.times[i] - elapsed_s < (self.times[i] - (self.times[i - 1] if i else 0)) / 2:
            i += 1  # past the middle of an interval: this poll came early (jitter) and counts as the one due next
        if i < len(self.times):
            return min(max(self.times[i] - elapsed_s, floor), limits.max_s)
        if elapsed_s < self.far_s:
            return min(limits.max_s, limits.declared_interval(_declared_poll(limits, elapsed_s)))
        return limits.max_s


def _declared_poll(limits: Limits, elapsed_s: float) -> int:
    """The index of the declared schedule's next poll at `elapsed_s` after start."""
    t, poll = 0.0, 1
    while poll < 10_000:
        t += limits.declared_interval(poll)
        if t > elapsed_s or limits.declared_interval(poll) >= limits.max_s:
            return poll
        poll += 1
    return poll


def plan(weights: Sequence[float], limits: Limits, *, warmup: float, target: float = 1.0) -> Schedule:
    """The schedule for a kind with this histogram. Below `warmup` jobs' weight, the declared one. Else the
    reference, the declared schedule with its intervals scaled by `target` (within the limits; the declared one
    itself at the default target 1), unless a learned schedule, at no more than the reference's mean and p95 delay,
    needs at least `DEFAULT_MIN_SAVING` fewer calls: then that one."""
    if sum(w for w in weights if w > 0) < warmup * (1 - 1e-6):  # shares of one job may sum to 0.9999999
        return Schedule(None, limits)
    floor = min(limits.min_s, limits.initial_s)
    if floor >= limits.max_s:  # every interval, learned or declared, can only be max_s: nothing to choose
        return Schedule(None, limits)  # (and the search would cost O(support / max_s) per step: 1 s for 1 ms)
    dist = Distribution(weights)
    reference = replace(  # the declared schedule at the delays aimed at, within the kind's limits
        limits,
        initial_s=min(max(limits.initial_s * target, floor), limits.max_s),
        max_s=min(max(limits.max_s * target, floor), limits.max_s),
    )
    declared = cost(reference.declared_times(dist.end), dist)
    scale = dist.quantile(0.5)
    best: tuple[list[float], Cost] | None = None
    low, high = math.log(1e-4), math.log(1e2)  # K / median
    for _ in range(DEFAULT_CALIBRATION_STEPS):
        mid = (low + high) / 2
        times = learned_times(dist, math.exp(mid) * scale, limits)
        got = cost(times, dist, max_mean_s=declared.mean_delay_s)
        ok = got.mean_delay_s <= declared.mean_delay_s and got.p95_delay_s <= declared.p95_delay_s
        if ok and (best is None or got.calls < best[1].calls):
            best = (times, got)
        low, high = (mid, high) if ok else (low, mid)
    if best is None or best[1].calls > (1 - DEFAULT_MIN_SAVING) * declared.calls:
        return Schedule(None, reference, declared=declared)
    far = max(DEFAULT_FAR_TAIL * dist.quantile(0.999), dist.end)
    return Schedule(tuple(best[0]), limits, far, learned=best[1], declared=declared)


def weights_from(fields: Mapping[str, float]) -> list[float]:
    """A histogram's bucket weights from its stored fields (`b<i>`: weight)."""
    weights = [0.0] * DEFAULT_BUCKETS
    for name, value in fields.items():
        if name.startswith("b") and name[1:].isdigit() and int(name[1:]) < DEFAULT_BUCKETS:
            weights[int(name[1:])] = max(0.0, value)
    return weights
