"""Learn mode's workload (`python -m bench --mode learn`): which jobs, of which kinds, when, with which params.

Every group is given the same plan, so each simulator hands out its log-normal durations in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

#: The workload: service kind -> (simulator kind, params, median s, sigma), durations in Cekura (real) seconds.
WORKLOAD: dict[str, tuple[str, dict[str, Any], float, float]] = {
    "agent.auto_fetch": ("auto_fetch", {"agent_id": 5}, 8.0, 0.8),
    "metric.clean_description": (
        "clean_description",
        {"agent": 1, "metric_description": "bench", "eval_type": "boolean"},
        30.0,
        0.5,
    ),
    "evaluator.run": ("evaluator_run", {"agent_id": 5}, 600.0, 0.8),
}
#: Evaluator runs cycle through CI suites of this many evaluators (`scenarios` 1..N, one run each).
SUITES = (2, 5, 10, 20)
#: Least time between two submissions, so that no group starts two jobs in another order than the others.
DEFAULT_MIN_GAP_S = 0.05


@dataclass(frozen=True)
class Job:
    """One job of the workload: when it is submitted (s after the first), its kind and id."""

    at_s: float
    kind: str
    job_id: str


def workload(seed: int, submit_s: float, jobs_per_kind: int) -> list[Job]:
    """Every kind's jobs at random moments, at least `DEFAULT_MIN_GAP_S` apart so that every group starts them in
    the same order (each simulator hands out durations in start order); ids count up per kind in that order."""
    rng = random.Random(seed)
    moments = sorted((rng.uniform(0, submit_s), kind) for kind in WORKLOAD for _ in range(jobs_per_kind))
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for at_s, kind in moments:
        n = seen[kind] = seen.get(kind, -1) + 1
        at_s = max(at_s, jobs[-1].at_s + DEFAULT_MIN_GAP_S) if jobs else at_s
        jobs.append(Job(at_s, kind, f"{kind}-{n:04d}"))
    return jobs


def params_for(job: Job) -> dict[str, Any]:
    """A job's params: its kind's, and for an evaluator run the suite its turn in `SUITES` gives."""
    params = WORKLOAD[job.kind][1]
    size = _suite(job.job_id)
    return params if size is None else {**params, "scenarios": list(range(1, size + 1))}


def _suite(job_id: str) -> int | None:
    kind, _, n = job_id.rpartition("-")
    return SUITES[int(n) % len(SUITES)] if kind == "evaluator.run" else None


def suite_of(job_id: str) -> str | None:
    """The per-suite line an evaluator run is also counted in (`evaluator.run [10 runs]`)."""
    size = _suite(job_id)
    return None if size is None else f"evaluator.run [{size} runs]"
