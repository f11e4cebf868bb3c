"""The registry of job kinds: one module per Cekura operation, each exporting `KIND`."""

from actors.kinds import (
    auto_fetch,
    clean_description,
    evaluator_run,
    metric_generate,
    metric_improve,
    scenario_agent,
    scenario_from_transcript,
    scenario_generate,
    toggle_mock_tools,
    tools_auto_fetch,
)
from actors.kinds.base import JobKind, Outcome, Params

KINDS: dict[str, JobKind] = {
    module.KIND.name: module.KIND
    for module in (
        auto_fetch,
        toggle_mock_tools,
        scenario_agent,
        clean_description,
        evaluator_run,
        scenario_generate,
        metric_generate,
        tools_auto_fetch,
        scenario_from_transcript,
        metric_improve,
    )
}

__all__ = ["KINDS", "JobKind", "Outcome", "Params"]
