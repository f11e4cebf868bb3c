"""Rules kinds share where Cekura's operations differ in more than their status words (see `base.JobKind`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.kinds.base import Outcome
from actors.kinds.values import json_object
from worker.cekura.progress import Progress

#: How many failed runs an evaluator verdict names (the result event holds them all).
DEFAULT_NAMED_RUNS = 10
#: Run statuses that mean the run is over, for a result that lists its runs but gives no counts.
FINISHED_RUN_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled", "error"})


def _count(answer: Mapping[str, Any], name: str) -> int | None:
    value = answer.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(answer: Mapping[str, Any], name: str) -> int | None:
    """A count that may come as an integer or as digits (the published Result schema types counts as strings)."""
    value = answer.get(name)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return _count(answer, name)


def run_progress(answer: Mapping[str, Any]) -> Progress | None:
    """An evaluator result's progress: runs done of `total_runs_count`. Done is `completed_runs_count`, or
    `success_runs_count + failed_runs_count` if more, or, with neither, the runs listed with a finished status."""
    total = _number(answer, "total_runs_count")
    if total is None or total <= 0:
        return None
    completed, success, failed = (_number(answer, f"{name}_runs_count") for name in ("completed", "success", "failed"))
    if completed is None and success is None and failed is None:
        listed = runs(answer)
        if not listed:
            return None
        done = sum(1 for run in listed if run.get("status") in FINISHED_RUN_STATUSES)
    else:
        done = max(completed or 0, (success or 0) + (failed or 0))
    return Progress(min(done, total), total)


def status_or_counts(answer: Mapping[str, Any]) -> str | None:
    """Generation progress: `status` when the answer has one, else done once `completed + failed >= total > 0`
    (`generate-progress` publishes counts and no status; Cekura's tool notes poll a status)."""
    status = answer.get("status")
    if isinstance(status, str) and status:
        return status
    total, done, failed = (_count(answer, f"{n}_scenarios") for n in ("total", "completed", "failed"))
    if total is None or done is None:
        return None
    if total > 0 and done + (failed or 0) >= total:
        return "completed" if done > 0 else "failed"
    return "in_progress"


def status_or_output(answer: Mapping[str, Any]) -> str | None:
    """Metric improvement: `status` (`success`/`error`, Cekura's prose) when present, else the published schema's
    shape, which has none: done once the improved description is there."""
    status = answer.get("status")
    if isinstance(status, str) and status:
        return status
    return "success" if isinstance(answer.get("improved_metric_description"), str) else "in_progress"


def runs(answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """An evaluator result's runs, whether Cekura sends them as a list or as an object keyed by run id."""
    value = answer.get("runs")
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else []
    return [run for run in items if isinstance(run, Mapping)]


def all_runs_passed(outcome: Outcome, answer: Mapping[str, Any]) -> tuple[Outcome, str]:
    """Cekura's CI gate: a run passes only when `status` is completed and `success_runs_count ==
    total_runs_count > 0` (a `completed` result may hold failed runs); the error names the runs that failed."""
    if outcome is not Outcome.COMPLETED:
        return outcome, ""
    total, passed = _count(answer, "total_runs_count"), _count(answer, "success_runs_count")
    if total is None or passed is None:
        return Outcome.FAILED, "the result has no total_runs_count or success_runs_count: the gate can't pass"
    if total == 0:
        return Outcome.FAILED, "the result has no runs (total_runs_count is 0)"
    if passed == total:
        return Outcome.COMPLETED, ""
    failed = [run for run in runs(answer) if run.get("success") is not True]
    named = ", ".join(f"{run.get('id')} ({run.get('scenario_name') or run.get('scenario')})" for run in failed)
    more = len(failed) - DEFAULT_NAMED_RUNS
    if more > 0:
        named = ", ".join(named.split(", ")[:DEFAULT_NAMED_RUNS]) + f" and {more} more"
    return Outcome.FAILED, f"{total - passed} of {total} runs failed" + (f": {named}" if named else "")


def feedback_answers(progress_id: str, text: str) -> dict[str, Any]:
    """The body of `process_feedbacks_answer`: a JSON object answer is sent as the answers keyed by question id;
    any other text answers every question, under the key `all` (the contract here is the least certain).

    The object obeys every request value's rules (`values.check_values`): one it can't send raises `InvalidRequest`
    naming the problem, when the answer is submitted and, for a record older than that check, when it is delivered."""
    answers = json_object(text, "answer")
    return {"progress_id": progress_id, "answers": {"all": text} if answers is None else answers}
