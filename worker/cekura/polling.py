"""When to poll next: each kind's declared schedule, or (issue 15) a schedule learned from how long its jobs take.

`PollingBook` is what the actors ask: `next_delay_s(kind, plan, poll, elapsed_s)` before each progress poll, and
`observe(kind, low_s, high_s)` once a job reached a terminal Cekura status between two polls. Each kind's durations
live in one small Redis hash (`<prefix>:durations:<kind>`, `DEFAULT_BUCKETS` buckets at most) shared by the fleet;
`observe` adds to it with one EVALSHA (`record_duration.lua`), which halves the whole histogram whenever its weight
passes CEKURA_LEARN_WINDOW_JOBS, so it stays bounded and follows change. The schedule itself is computed in each
process (`worker/cekura/durations.py`) from the hash, read again at most every CEKURA_LEARN_REFRESH_S by whichever
thread finds it stale (the others keep using the schedule they have), so a poll costs no extra round trip.

Limits hold whatever was learned: every learned interval lies within [min_s, max_s] of the kind (its `PollPlan`,
then CEKURA_POLL_OVERRIDES, then the CEKURA_POLL_* settings); the actors cap each delay at the job's deadline, and
the claim script enforces the fleet's rate cap and 429 cooldowns. A kind with fewer than
CEKURA_LEARN_WARMUP_JOBS jobs recorded, or whose learned schedule would not save calls, or with
CEKURA_LEARN_POLLING off, keeps its declared schedule.

A kind whose answers count what is done (`JobKind.progress_of`, issue 21) has the interval `next_delay_s` gave
stretched by `stretch`, up to `max_s`, while the parts left can't plausibly all be done before it
(`worker/cekura/progress.py`); from the answer and the elapsed time alone, so no Redis call either.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
import structlog

from config.settings import Settings
from worker.cekura.durations import DEFAULT_BUCKETS, Distribution, Limits, Schedule, plan, spread, weights_from
from worker.cekura.progress import Progress, stretched_delay
from worker.store import scripts

log = structlog.get_logger(__name__)

#: A bucket halved below this weight is dropped from the hash (it no longer says anything).
DEFAULT_NEGLIGIBLE_WEIGHT = 1e-3
#: Schedules remembered per process by histogram and limits (a long kind's takes up to ~0.1 s to compute).
DEFAULT_PLAN_CACHE = 64
#: Poll times shown per kind by `describe` (the status command).
DEFAULT_SHOWN_POLLS = 8


@dataclass(frozen=True, slots=True)
class PollPlan:
    """A kind's declared schedule: `initial_s`, then each interval `factor` times the last, capped at `max_s`;
    a learned interval never shorter than `min_s` nor longer than `max_s`. None fields take the settings'
    values (CEKURA_POLL_*); CEKURA_POLL_OVERRIDES overrides any field per kind."""

    initial_s: float | None = None
    factor: float | None = None
    max_s: float | None = None
    min_s: float | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    """What a process knows of one kind: its histogram as last read, when, and the schedule built from it."""

    read_at: float
    weights: tuple[float, ...]
    limits: Limits
    schedule: Schedule
    prior: Distribution | None
    jobs: int = 0


class PollingBook:
    """The polling schedule of every kind, for one worker process (thread-safe)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._record = scripts.load(client, "record_duration", per_thread=True)
        self._entries: dict[str, _Entry] = {}
        self._refreshing = threading.Lock()

    def limits(self, kind_name: str, plan: PollPlan) -> Limits:
        """The kind's declared schedule and interval limits (`limits_for`)."""
        return limits_for(kind_name, plan, self.settings)

    def next_delay_s(self, kind_name: str, plan: PollPlan, poll: int, elapsed_s: float) -> float:
        """Seconds until the `poll`-th progress poll (1-based), `elapsed_s` after the start call answered; jitter
        (CEKURA_POLL_JITTER) included, the job's deadline not (the caller caps at it)."""
        schedule = self.schedule(kind_name, plan)
        return self._jittered(schedule.delay_after(max(0.0, elapsed_s), poll))

    def stretch(
        self, kind_name: str, plan: PollPlan, delay_s: float, elapsed_s: float, progress: Progress | None
    ) -> float:
        """The delay before the next poll (`delay_s`, from `next_delay_s`), put off while the `progress` the last
        answer reported (the kind's `progress_of`) says the operation can't plausibly end before it: up to the
        kind's `max_s`, never shorter (`worker/cekura/progress.py`). Unchanged without progress or with
        CEKURA_LEARN_POLLING off. Pure arithmetic: no Redis call."""
        if progress is None or not self.settings.cekura_learn_polling:
            return delay_s
        stretched = stretched_delay(delay_s, progress, elapsed_s, self.limits(kind_name, plan).max_s)
        return max(delay_s, self._jittered(stretched)) if stretched > delay_s else delay_s

    def _jittered(self, delay_s: float) -> float:
        jitter = self.settings.cekura_poll_jitter
        return max(0.0, delay_s * (1 + random.uniform(-jitter, jitter))) if jitter > 0 else delay_s

    def schedule(self, kind_name: str, plan: PollPlan) -> Schedule:
        """The schedule in use for a kind: from this process's copy of its histogram, read again when stale."""
        limits = self.limits(kind_name, plan)
        if not self.settings.cekura_learn_polling:
            return Schedule(None, limits)
        entry = self._entries.get(kind_name)
        stale = entry is None or time.monotonic() - entry.read_at >= self.settings.cekura_learn_refresh_s
        if (stale or entry is None or entry.limits != limits) and self._refreshing.acquire(blocking=False):
            try:  # one thread reads and rebuilds; the others go on with what they have
                entry = self._refresh(kind_name, limits, entry)
            finally:
                self._refreshing.release()
        return entry.schedule if entry is not None and entry.limits == limits else Schedule(None, limits)

    def observe(self, kind_name: str, low_s: float, high_s: float) -> None:
        """A job of this kind reached a terminal status between `low_s` and `high_s` after its start answered:
        add it to the kind's histogram (one EVALSHA; a failure is logged, never raised)."""
        if not (math.isfinite(low_s) and math.isfinite(high_s)) or high_s < 0:
            log.warning("duration_not_recorded", kind=kind_name, low_s=low_s, high_s=high_s, reason="not a duration")
            return
        entry = self._entries.get(kind_name)
        shares = spread(low_s, high_s, entry.prior if entry is not None else None)
        args: list[Any] = [self.settings.cekura_learn_window_jobs, DEFAULT_NEGLIGIBLE_WEIGHT]
        for bucket, share in sorted(shares.items()):
            args += [f"b{bucket}", f"{share:.9g}"]
        try:
            self._record(keys=[self.key(kind_name)], args=args)
        except redis.RedisError as exc:
            log.warning("duration_not_recorded", kind=kind_name, error=str(exc))

    def key(self, kind_name: str) -> str:
        """The Redis hash holding a kind's duration histogram."""
        return self.settings.key("durations", kind_name)

    def describe(self, kind_name: str, plan: PollPlan) -> dict[str, Any]:
        """The kind's learned state for `status`: jobs recorded, duration percentiles, the schedule in use and what
        it is expected to cost against the declared one (reads Redis now)."""
        limits = self.limits(kind_name, plan)
        jobs, weights = self._read(kind_name)
        schedule = self._plan(weights, limits)
        total = sum(weights)
        out: dict[str, Any] = {
            "jobs": jobs,
            "weight": round(total, 2),
            "declared": {"initial_s": limits.initial_s, "factor": limits.factor, "max_s": limits.max_s},
            "limits": {"min_s": limits.min_s, "max_s": limits.max_s},
            "durations_s": None,
        }
        if total > 0:
            dist = Distribution(weights)
            out["durations_s"] = {f"p{q:g}": round(dist.quantile(q / 100), 3) for q in (50, 90, 95, 99)}
        if schedule.times is None:
            warm = total >= self._warmup * (1 - 1e-6)
            reason = "learning off" if not self.settings.cekura_learn_polling else None
            reason = reason or ("no saving" if warm else f"warming up: {total:.0f}/{self._warmup:g} jobs")
            out["schedule"] = {"in_use": "declared", "why": reason}
        else:
            shown = [round(t, 3) for t in schedule.times[:DEFAULT_SHOWN_POLLS]]
            out["schedule"] = {"in_use": "learned", "first_polls_s": shown, "max_s_after": round(schedule.far_s, 3)}
        for name, cost in (("learned", schedule.learned), ("declared", schedule.declared)):
            if cost is not None:
                out["schedule"][f"{name}_expected"] = {
                    "calls": round(cost.calls, 2),
                    "mean_delay_s": round(cost.mean_delay_s, 3),
                    "p95_delay_s": round(cost.p95_delay_s, 3),
                }
        return out

    @property
    def _warmup(self) -> float:
        return float(self.settings.cekura_learn_warmup_jobs)

    def _plan(self, weights: tuple[float, ...], limits: Limits) -> Schedule:
        if not self.settings.cekura_learn_polling:
            return Schedule(None, limits)
        return _plan_cached(weights, limits, self._warmup, self.settings.cekura_learn_delay_target)

    def _read(self, kind_name: str) -> tuple[int, tuple[float, ...]]:
        raw = self.client.hgetall(self.key(kind_name))
        fields: dict[str, float] = {}
        for name, value in raw.items():
            try:
                fields[name.decode() if isinstance(name, bytes) else str(name)] = float(value)
            except ValueError:
                continue
        return int(fields.get("jobs", 0)), tuple(weights_from(fields))

    def _refresh(self, kind_name: str, limits: Limits, entry: _Entry | None) -> _Entry | None:
        """Read the kind's histogram; rebuild its schedule if the histogram or the limits changed."""
        now = time.monotonic()
        try:
            jobs, weights = self._read(kind_name)
        except redis.RedisError as exc:
            log.warning("polling_history_unavailable", kind=kind_name, error=str(exc))
            if entry is None:
                entry = _Entry(now, (0.0,) * DEFAULT_BUCKETS, limits, Schedule(None, limits), None)
            else:
                entry = _Entry(now, entry.weights, entry.limits, entry.schedule, entry.prior, entry.jobs)
            self._entries[kind_name] = entry
            return entry
        if entry is not None and entry.weights == weights and entry.limits == limits:
            fresh = _Entry(now, weights, limits, entry.schedule, entry.prior, jobs)
        else:
            schedule = self._plan(weights, limits)
            prior = Distribution(weights) if sum(weights) > 0 else None
            fresh = _Entry(now, weights, limits, schedule, prior, jobs)
            if entry is None or (entry.schedule.times is None) != (schedule.times is None):
                log.info("polling_schedule", kind=kind_name, learned=schedule.times is not None, jobs=jobs)
        self._entries[kind_name] = fresh
        return fresh


def limits_for(kind_name: str, plan: PollPlan, settings: Settings) -> Limits:
    """A kind's declared schedule and interval limits: CEKURA_POLL_OVERRIDES, then its plan, then the settings."""
    given = {k: v for k, v in _fields(plan).items() if v is not None}
    given.update(settings.cekura_poll_overrides.get(kind_name, {}))
    max_s = given.get("max_s", settings.cekura_poll_max_s)
    return Limits(
        initial_s=min(given.get("initial_s", settings.cekura_poll_initial_s), max_s),
        factor=given.get("factor", settings.cekura_poll_factor),
        max_s=max_s,
        min_s=min(given.get("min_s", settings.cekura_poll_min_s), max_s),
    )


@lru_cache(maxsize=DEFAULT_PLAN_CACHE)
def _plan_cached(weights: tuple[float, ...], limits: Limits, warmup: float, target: float) -> Schedule:
    """`durations.plan`, remembered: a status call, or a histogram nothing was added to, costs no recomputation."""
    return plan(weights, limits, warmup=warmup, target=target)


def _fields(plan: PollPlan) -> dict[str, float | None]:
    return {"initial_s": plan.initial_s, "factor": plan.factor, "max_s": plan.max_s, "min_s": plan.min_s}
