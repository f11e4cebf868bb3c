"""`metric.improve_from_feedback`: improve a metric from the feedback on its test sets.

The least certain contract: Cekura's published schema has no `status`, its prose polls "until status is success
or error" and reads the answer under `output`. Both shapes are accepted (`rules.status_or_output`); the word for
a run paused on questions is unpublished, so the likely ones are listed in `waiting` (a waiting word that comes
with no question is taken for "still running").
"""

from typing import Literal

from actors.kinds.base import JobKind, Outcome, Params
from actors.kinds.rules import feedback_answers, status_or_output


class MetricImproveParams(Params):
    metric_id: int
    metric_type: Literal["basic", "custom_prompt", "custom_code", "llm_judge"] | None = None
    test_set_ids: list[int] | None = None
    simplified_prompt: str | None = None
    skip_evaluation: bool | None = None


KIND = JobKind(
    name="metric.improve_from_feedback",
    params=MetricImproveParams,
    start_path="/test_framework/metric-reviews/process_feedbacks/",
    progress_path="/test_framework/metric-reviews/process_feedbacks_progress/",
    status_of=status_or_output,
    terminal={"success": Outcome.COMPLETED, "error": Outcome.FAILED, "cancelled": Outcome.CANCELLED},
    running=frozenset({"in_progress", "queued", "pending", "processing"}),
    waiting=frozenset({"awaiting_answers", "waiting_for_answers", "needs_input"}),
    answer_path="/test_framework/metric-reviews/process_feedbacks_answer/",
    answer_body=feedback_answers,
    cancel_path="/test_framework/metric-reviews/process_feedbacks_cancel/",
    cancel_body=lambda session_id, progress_id: {"progress_id": progress_id},
    repeatable_start=False,  # a second run would optimize the metric twice
)
