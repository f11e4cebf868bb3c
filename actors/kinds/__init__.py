"""The registry of job kinds: one module per Cekura operation, each exporting `KIND`."""

from actors.kinds import auto_fetch, clean_description, scenario_agent, toggle_mock_tools
from actors.kinds.base import JobKind, Outcome, Params

KINDS: dict[str, JobKind] = {
    module.KIND.name: module.KIND for module in (auto_fetch, toggle_mock_tools, scenario_agent, clean_description)
}

__all__ = ["KINDS", "JobKind", "Outcome", "Params"]
