"""Validate `deploy/` offline: `python deploy/validate.py` (or `make validate-deploy`); exit 0 when all is well.

For each overlay (every folder under deploy/overlays/, or the ones named): render it with kustomize, validate the
built-in objects against Kubernetes' schemas in strict mode and the KEDA objects against KEDA's vendored CRDs,
and check the references between them, the settings they must agree on, and the webhook receiver and the Ingress in
front of it. Then the Prometheus rules
(`promtool check rules`, `promtool test rules`), the Grafana dashboard, and every metric name and label in all of
their PromQL against what the worker exports. Needs kubectl (or kustomize) and promtool; `--deploy` points at
another copy of deploy/ (the tests break a copy on purpose).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `deploy.checks` and `config` importable
    sys.path.insert(0, str(REPO))

# After the path set-up above, hence E402.
from deploy.checks import ToolMissing, consistency, manifests, monitoring, promql, webhooks  # noqa: E402

#: Exit statuses: all checks passed, a check failed, a tool a check needs is missing.
EXIT_OK, EXIT_FAILED, EXIT_TOOL_MISSING = 0, 1, 2


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is under it, for shorter lines."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _report(label: str, problems: list[str]) -> bool:
    print(f"  {'ok  ' if not problems else 'FAIL'}  {label}", flush=True)
    for problem in problems:
        print(f"        {problem}", flush=True)
    return not problems


def validate(deploy: Path, overlays: Sequence[Path]) -> bool:
    """Run every check, print one line per check (and its problems); True when all passed."""
    ok = True
    rendered: list[manifests.Object] = []
    for overlay in overlays:
        print(f"{_shown(overlay)}:", flush=True)
        try:
            objects = manifests.render(overlay)
        except subprocess.CalledProcessError as exc:
            print(f"  FAIL  render\n        {exc.stderr.strip()}", flush=True)
            ok = False
            continue
        rendered += objects
        print(f"  ok    render: {len(objects)} objects", flush=True)
        versions = ", ".join(manifests.DEFAULT_KUBERNETES_VERSIONS)
        ok &= _report(f"Kubernetes schemas {versions}, strict", manifests.kubernetes_problems(objects))
        ok &= _report(
            "KEDA schemas (deploy/schemas/keda)", manifests.crd_problems(objects, deploy / "schemas" / "keda")
        )
        ok &= _report("references", consistency.reference_problems(objects))
        ok &= _report("worker settings", consistency.settings_problems(objects))
        ok &= _report("webhook receiver and its Ingress", webhooks.webhook_problems(objects))

    print("monitoring:", flush=True)
    rules = deploy / "prometheus" / "cekura-worker.rules.yml"
    tests = deploy / "prometheus" / "cekura-worker.rules.test.yml"
    ok &= _report("promtool check rules, promtool test rules", monitoring.rules_problems(rules, tests))
    for dashboard in sorted((deploy / "grafana").glob("*.json")):
        ok &= _report(f"dashboard {dashboard.name}", monitoring.dashboard_problems(dashboard))
    scaling = [(where, q) for where, q in monitoring.queries(deploy, rendered) if " trigger " in where]
    ok &= _report("ScaledObject queries parse", monitoring.syntax_problems("scaledobject.queries", scaling))

    exported = promql.exported_metrics(REPO)
    named = list(monitoring.queries(deploy, rendered))
    ok &= _report(
        f"metric names and labels in {len(named)} queries, against the {len(exported)} the service exports",
        [problem for where, expr in named for problem in promql.usage_problems(where, expr, exported)],
    )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("overlays", nargs="*", type=Path, help="overlays to render (default: every deploy/overlays/*)")
    parser.add_argument("--deploy", type=Path, default=REPO / "deploy", help="the deploy/ folder (default: this one)")
    args = parser.parse_args(argv)
    overlays = args.overlays or sorted(path for path in (args.deploy / "overlays").iterdir() if path.is_dir())
    try:
        ok = validate(args.deploy, overlays)
    except ToolMissing as exc:
        print(
            f"validate: {exc}. Install kubectl (or kustomize) and promtool (Debian: apt-get install prometheus).",
            file=sys.stderr,
        )
        return EXIT_TOOL_MISSING
    print("all checks passed" if ok else "some checks failed", flush=True)
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
