"""`metric.generate`: suggest metrics for an agent; the result holds them (Cekura does not save them)."""

from typing import Annotated

from pydantic import Field, model_validator

from actors.kinds.base import JobKind, Outcome, Params


class MetricGenerateParams(Params):
    agent_id: int | None = None
    assistant_id: str | None = None
    num_metrics: Annotated[int, Field(ge=1, le=100)] = 1

    @model_validator(mode="after")
    def _one_agent(self) -> "MetricGenerateParams":
        if self.agent_id is None and not self.assistant_id:
            raise ValueError("agent_id or assistant_id is required")
        return self


KIND = JobKind(
    name="metric.generate",
    params=MetricGenerateParams,
    start_path="/test_framework/v1/metrics/generate_metrics/",
    progress_path="/test_framework/v1/metrics/generate_metrics_progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    running=frozenset({"queued", "in_progress"}),
)
