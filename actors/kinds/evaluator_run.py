"""`evaluator.run`: run evaluators and wait for the verdict (Cekura's CI gate, like its CLI's `run --wait`)."""

from typing import Annotated, Literal

from pydantic import Field

from actors.kinds.base import JobKind, Outcome, Params, json_body
from actors.kinds.rules import all_runs_passed, run_progress
from worker.cekura.polling import PollPlan


class EvaluatorRunParams(Params):
    mode: Literal["voice", "text"] = "voice"  # run_scenarios or run_scenarios_text; not sent to Cekura
    agent_id: int | None = None
    assistant_id: str | None = None
    scenarios: list[int] | None = None
    tags: list[str] | None = None
    folder_path: str | None = None
    project_id: int | None = None
    frequency: Annotated[int, Field(ge=1)] = 1
    name: str | None = None
    personality_ids: list[int] | None = None
    test_profile_ids: list[int] | None = None
    concurrency_limit: Annotated[int, Field(ge=1)] | None = None
    mock_tool_names: list[str] | None = None


KIND = JobKind(
    name="evaluator.run",
    params=EvaluatorRunParams,
    start_path=lambda p: (
        f"/test_framework/v1/scenarios/{'run_scenarios_text' if p.mode == 'text' else 'run_scenarios'}/"
    ),
    start_body=lambda p: json_body(p, exclude=frozenset({"mode"})),
    progress_path="/test_framework/v1/results/{progress_id}/",
    progress_id_field="id",
    terminal={
        "completed": Outcome.COMPLETED,  # then the gate below decides
        "failed": Outcome.FAILED,
        "timeout": Outcome.FAILED,
        "cancelled": Outcome.CANCELLED,
    },
    running=frozenset({"running", "pending", "in_progress", "evaluating", "in_queue", "scaling_up"}),
    verdict=all_runs_passed,
    cancel_path="/test_framework/v1/results/{progress_id}/end_calls/",
    cancel_body=lambda session_id, progress_id: None,
    repeatable_start=False,  # a second run_scenarios would place every call twice
    poll_plan=PollPlan(initial_s=30.0, factor=1.0, max_s=60.0),  # Cekura's GitHub Action polls every 30 s
    progress_of=run_progress,  # runs done of total: polls put off, up to 60 s, while many runs are left
    default_deadline_s=3 * 3600,
    webhooks=True,  # Cekura POSTs result.completed to the project's webhook_url
    tag_field="name",  # "<name> [cw:<job id>]", found again with results/?search= when the start answer is lost
    lookup_path="/test_framework/v1/results/",
)
