"""Offline checks of `deploy/`: the rendered Kubernetes objects against Kubernetes' and KEDA's schemas, the
references between them and the worker's settings, the Prometheus rules (promtool) and the Grafana dashboard,
and every metric their PromQL names against what the worker exports. `deploy/validate.py` runs them all.

Each check returns a list of problems, one readable sentence each; an empty list means it passed. A missing
tool (kubectl, promtool) raises `ToolMissing`, so a caller can tell "broken" from "can't check here".
"""

from __future__ import annotations

import shutil


class ToolMissing(Exception):
    """Raised when a command-line tool a check needs is not installed."""


def which(*names: str) -> str:
    """The path of the first of `names` found on PATH; raises `ToolMissing` naming them all if none is."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ToolMissing(" or ".join(names) + " not found on PATH")
