"""Fixtures for the deploy/ checks: the repository's deploy folder, a scratch copy of it to break, the rendered
example and sentinel overlays, and skips with the reason when kubectl (or kustomize) or promtool is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.checks import manifests
from tests.deploy.support import DEPLOY, EXAMPLE, HAS_KUSTOMIZE, SENTINEL


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """A private copy of deploy/ that a test may break."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="session")
def rendered() -> list[manifests.Object]:
    """The example overlay as kustomize renders it (tests change copies of these dicts, never these)."""
    if not HAS_KUSTOMIZE:
        pytest.skip("kubectl (or kustomize) is not installed: it renders the kustomize overlays")
    return manifests.render(EXAMPLE)


@pytest.fixture(scope="session")
def rendered_sentinel() -> list[manifests.Object]:
    """The sentinel overlay (Redis behind Sentinel) as kustomize renders it; tests change copies, never these."""
    if not HAS_KUSTOMIZE:
        pytest.skip("kubectl (or kustomize) is not installed: it renders the kustomize overlays")
    return manifests.render(SENTINEL)
