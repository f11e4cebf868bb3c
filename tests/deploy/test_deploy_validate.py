"""`deploy/validate.py` end to end, as `make validate-deploy` runs it: it passes on deploy/ as committed and fails,
naming the cause, on a copy with a mistyped Deployment field, a broken PromQL rule, or a webhook Ingress that makes
more than `/webhooks/cekura` public.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.deploy.support import DEPLOY, REPO, needs_kustomize, needs_promtool

pytestmark = [needs_kustomize, needs_promtool]


def _validate(deploy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "validate.py"), "--deploy", str(deploy)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} should occur once in {path}"
    path.write_text(text.replace(old, new))


def test_deploy_as_committed_passes_every_check() -> None:
    done = _validate(DEPLOY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert done.stdout.rstrip().endswith("all checks passed")
    checks = ("render:", "Kubernetes schemas", "KEDA schemas", "webhook receiver and its Ingress", "metric names")
    for check in (*checks, "promtool check rules"):
        assert check in done.stdout
    for overlay in ("deploy/overlays/example:", "deploy/overlays/sentinel:"):
        assert overlay in done.stdout


def test_a_mistyped_deployment_field_fails(deploy_copy: Path) -> None:
    _edit(deploy_copy / "base" / "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true")

    done = _validate(deploy_copy)
    assert done.returncode == 1, done.stdout + done.stderr
    # The base is in every overlay: each one fails that check, and only that one.
    overlays = [path for path in (deploy_copy / "overlays").iterdir() if path.is_dir()]
    failed = [line for line in done.stdout.splitlines() if "FAIL" in line]
    assert len(overlays) >= 2 and len(failed) == len(overlays), done.stdout
    assert all("Kubernetes schemas" in line for line in failed), done.stdout
    assert "Deployment cekura/cekura-worker" in done.stdout
    assert "'readOnlyRootFileSystem' was unexpected" in done.stdout


def test_a_broken_promql_rule_fails(deploy_copy: Path) -> None:
    rules = deploy_copy / "prometheus" / "cekura-worker.rules.yml"
    _edit(rules, "expr: min by (namespace) (cekura_redis_up) == 0", "expr: min by (namespace) (cekura_redis_up == 0")

    done = _validate(deploy_copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  promtool check rules" in done.stdout
    assert "cekura-worker.rules.yml" in done.stdout
    assert "unclosed left parenthesis" in done.stdout


def test_a_webhook_ingress_that_exposes_more_than_the_webhook_path_fails(deploy_copy: Path) -> None:
    _edit(
        deploy_copy / "components" / "webhooks" / "ingress.yaml",
        "          - path: /webhooks/cekura\n            pathType: Exact\n",
        "          - path: /\n            pathType: Prefix\n",
    )

    done = _validate(deploy_copy)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if "FAIL" in line]
    assert failed and all("webhook receiver and its Ingress" in line for line in failed), done.stdout
    assert (
        "Ingress cekura/cekura-worker-webhooks: routes '/' (Prefix): only /webhooks/cekura (pathType Exact)"
        in done.stdout
    )


def test_a_missing_tool_is_reported_as_such(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "validate.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},  # neither kubectl, kustomize nor promtool
    )
    assert done.returncode == 2
    assert "kubectl or kustomize not found" in done.stderr
    assert "apt-get install prometheus" in done.stderr
