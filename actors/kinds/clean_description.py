"""`metric.clean_description`: Cekura's AI rewrites a metric's description."""

from typing import Literal

from actors.kinds.base import JobKind, Outcome, Params


class CleanDescriptionParams(Params):
    agent: int
    metric_description: str
    eval_type: Literal["boolean", "numeric", "rating", "enum"]


KIND = JobKind(
    name="metric.clean_description",
    params=CleanDescriptionParams,
    start_path="/test_framework/v1/metrics/generate_clean_description_bg/",
    progress_path="/test_framework/v1/metrics/generate_clean_description_progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    running=frozenset({"queued", "processing"}),
)
