"""Paths and skip markers shared by the deploy/ tests (fixtures are in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "overlays" / "example"
SENTINEL = DEPLOY / "overlays" / "sentinel"

HAS_KUSTOMIZE = shutil.which("kubectl") is not None or shutil.which("kustomize") is not None

needs_kustomize = pytest.mark.skipif(
    not HAS_KUSTOMIZE,
    reason="kubectl (or kustomize) is not installed: it renders the kustomize overlays (.ci/run says how to get it)",
)
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed: apt-get install prometheus (.ci/run installs it)",
)
