"""Each check of `deploy/checks` on the rendered example overlay: it passes as committed and catches the mistake it
exists for, named in a sentence a platform engineer can act on.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from deploy.checks import consistency, manifests, monitoring, promql, webhooks
from tests.deploy.support import DEPLOY, REPO, needs_promtool

KEDA_CRDS = DEPLOY / "schemas" / "keda"


def _one(objects: list[manifests.Object], kind: str, name: str | None = None) -> manifests.Object:
    (found,) = [obj for obj in objects if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    return found


@pytest.fixture
def objects(rendered: list[manifests.Object]) -> list[manifests.Object]:
    return copy.deepcopy(rendered)


def test_the_example_renders_every_object_a_deployment_needs(objects: list[manifests.Object]) -> None:
    base = ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment", "PodDisruptionBudget"]
    keda = ["Secret", "ScaledObject", "TriggerAuthentication"]
    webhooks = ["Deployment", "Service", "Ingress", "PodDisruptionBudget"]
    assert sorted(obj["kind"] for obj in objects) == sorted([*base, *keda, *webhooks])
    assert all(obj["metadata"].get("namespace") == "cekura" for obj in objects if obj["kind"] != "Namespace")


def test_the_example_passes_every_manifest_check(objects: list[manifests.Object]) -> None:
    assert manifests.kubernetes_problems(objects) == []
    assert manifests.crd_problems(objects, KEDA_CRDS) == []
    assert consistency.reference_problems(objects) == []
    assert consistency.settings_problems(objects) == []
    assert webhooks.webhook_problems(objects) == []


def test_the_deployment_runs_under_the_restricted_pod_security_standard(objects: list[manifests.Object]) -> None:
    pod = _one(objects, "Deployment", "cekura-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] | {"fsGroup": 10001} == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 40
    assert container["livenessProbe"]["exec"]["command"] == ["cekura-worker", "healthcheck", "--liveness"]
    assert container["readinessProbe"]["exec"]["command"] == ["cekura-worker", "healthcheck", "--readiness"]


def test_a_mistyped_scaledobject_field_fails_against_the_keda_crd(objects: list[manifests.Object]) -> None:
    spec = _one(objects, "ScaledObject")["spec"]
    spec["pollingIntervall"] = spec.pop("pollingInterval")
    spec["triggers"][0]["authenticationRef"]["nmae"] = "x"

    problems = manifests.crd_problems(objects, KEDA_CRDS)
    assert any("'pollingIntervall' was unexpected" in p and "ScaledObject cekura/cekura-worker" in p for p in problems)
    assert any("spec.triggers.0.authenticationRef" in p and "'nmae' was unexpected" in p for p in problems)


def test_a_trigger_metadata_value_must_be_a_string(objects: list[manifests.Object]) -> None:
    _one(objects, "ScaledObject")["spec"]["triggers"][1]["metadata"]["threshold"] = 1000

    (problem,) = manifests.crd_problems(objects, KEDA_CRDS)
    assert "spec.triggers.1.metadata.threshold: 1000 is not of type 'string'" in problem


def test_keda_object_metadata_is_checked_as_objectmeta(objects: list[manifests.Object]) -> None:
    metadata = _one(objects, "TriggerAuthentication")["metadata"]
    metadata["lables"] = metadata.pop("labels")

    (problem,) = manifests.crd_problems(objects, KEDA_CRDS)
    assert "TriggerAuthentication cekura/cekura-worker-keda-redis" in problem
    assert "'lables' was unexpected" in problem


def test_the_crd_cel_rule_is_evaluated(objects: list[manifests.Object]) -> None:
    spec = _one(objects, "ScaledObject")["spec"]
    spec["minReplicaCount"], spec["maxReplicaCount"] = 5, 3

    assert manifests.crd_problems(objects, KEDA_CRDS) == [
        "ScaledObject cekura/cekura-worker: minReplicaCount must be less than or equal to maxReplicaCount"
    ]


def test_a_crd_with_a_cel_rule_nobody_wrote_out_fails(objects: list[manifests.Object], tmp_path: Path) -> None:
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == "TriggerAuthentication":
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            schema["x-kubernetes-validations"] = [{"rule": "size(self.secretTargetRef) > 0", "message": "m"}]
        (tmp_path / path.name).write_text(yaml.safe_dump(crd))

    problems = manifests.crd_problems(objects, tmp_path)
    assert problems == [
        f"{tmp_path}: CEL rule not evaluated offline, add it to deploy/checks/manifests.py: "
        "size(self.secretTargetRef) > 0"
    ]


def test_a_reference_to_a_missing_secret_key_fails(objects: list[manifests.Object]) -> None:
    secret = next(o for o in objects if o["kind"] == "Secret" and "keda-redis" in o["metadata"]["name"])
    del secret["data"]["tls"]

    (problem,) = consistency.reference_problems(objects)
    assert problem.startswith("TriggerAuthentication cekura/cekura-worker-keda-redis: refers to key 'tls' of Secret")


def test_a_scaledobject_aimed_at_another_deployment_fails(objects: list[manifests.Object]) -> None:
    _one(objects, "ScaledObject")["spec"]["scaleTargetRef"]["name"] = "cekura-workers"

    assert consistency.reference_problems(objects) == [
        "ScaledObject cekura/cekura-worker: refers to Deployment cekura-workers, which is not rendered"
    ]


def test_settings_the_worker_would_ignore_fail(objects: list[manifests.Object]) -> None:
    _one(objects, "ConfigMap")["data"]["CEKURA_POLL_MAXS"] = "30"

    (problem,) = consistency.settings_problems(objects)
    assert "CEKURA_POLL_MAXS is not a setting of the worker" in problem


def test_secrets_the_worker_would_ignore_fail(objects: list[manifests.Object]) -> None:
    secret = next(
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("cekura-worker-secrets")
    )
    secret["data"]["CEKURA_WEBHOOKS_SECRET"] = secret["data"].pop("CEKURA_WEBHOOK_SECRET")

    (problem,) = consistency.settings_problems(objects)
    assert problem.startswith("Secret cekura/cekura-worker-secrets-")
    assert "CEKURA_WEBHOOKS_SECRET is not a setting of the worker (it would be ignored)" in problem
    # and the receiver's reference to the key it needs is broken
    (problem,) = consistency.reference_problems(objects)
    assert problem.startswith(
        "Deployment cekura/cekura-worker-webhooks: refers to key 'CEKURA_WEBHOOK_SECRET' of Secret"
    )


def test_a_service_or_budget_that_selects_no_pods_fails(objects: list[manifests.Object]) -> None:
    _one(objects, "Service", "cekura-worker-webhooks")["spec"]["selector"]["app.kubernetes.io/component"] = "webhook"
    budget = _one(objects, "PodDisruptionBudget", "cekura-worker")
    budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "workers"

    assert consistency.reference_problems(objects) == [
        "Service cekura/cekura-worker-webhooks: its selector matches the pods of no rendered Deployment",
        "PodDisruptionBudget cekura/cekura-worker: its selector matches the pods of no rendered Deployment",
    ]


def test_the_grace_period_must_outlast_the_shutdown_bound(objects: list[manifests.Object]) -> None:
    _one(objects, "ConfigMap")["data"]["CEKURA_SHUTDOWN_TIMEOUT_S"] = "45"

    (problem,) = consistency.settings_problems(objects)
    assert "terminationGracePeriodSeconds 40 must exceed the worker's shutdown bound 48 s" in problem


def test_the_trigger_must_watch_the_stream_and_group_the_workers_read(objects: list[manifests.Object]) -> None:
    data = _one(objects, "ConfigMap")["data"]
    data["CEKURA_REQUESTS_STREAM"], data["CEKURA_INTAKE_GROUP"] = "orders:requests", "orders"

    problems = consistency.settings_problems(objects)
    assert problems == [
        "ScaledObject cekura/cekura-worker: stream 'cekura:requests' is not CEKURA_REQUESTS_STREAM",
        "ScaledObject cekura/cekura-worker: consumerGroup 'cekura-worker' is not CEKURA_INTAKE_GROUP",
    ]


def test_the_metrics_port_must_match_the_setting(objects: list[manifests.Object]) -> None:
    _one(objects, "ConfigMap")["data"]["CEKURA_METRICS_PORT"] = "9200"

    problems = consistency.settings_problems(objects)
    assert len(problems) == 2
    assert "container port `metrics` 9100 is not CEKURA_METRICS_PORT 9200" in problems[0]
    assert "annotation prometheus.io/port 9100 is not CEKURA_METRICS_PORT 9200" in problems[1]


def test_scaling_queries_must_select_the_workers_namespace(objects: list[manifests.Object]) -> None:
    for obj in objects:
        obj["metadata"]["namespace"] = "queues"

    problems = consistency.settings_problems(objects)
    assert len(problems) == 3
    assert all("query selects namespace 'cekura', the workers run in 'queues'" in p for p in problems)


def test_promql_names_its_metrics_and_labels() -> None:
    usage = promql.selectors(
        'histogram_quantile(0.99, sum by (kind, le) (rate(cekura_job_duration_seconds_bucket{namespace="x"}[5m])))'
        ' > bool 1e3 or max without (pod) ({__name__="cekura_steps_due", pod=~"a.*"} offset 5m)'
    )
    assert [(s.metric, s.labels) for s in usage.selectors] == [
        ("cekura_job_duration_seconds_bucket", {"namespace"}),
        ("cekura_steps_due", {"pod"}),
    ]
    assert usage.grouping == {"kind", "le", "pod"}


def test_unknown_metric_names_and_labels_are_reported() -> None:
    exported = promql.exported_metrics(REPO)

    assert promql.usage_problems("q", "sum by (kind) (rate(cekura_jobs_finished_total[5m]))", exported) == []
    assert promql.usage_problems("q", "max(cekura_steps_due_total)", exported) == [
        "q: cekura_steps_due_total is not a metric the worker exports"
    ]
    assert promql.usage_problems("q", 'max(cekura_queue_messages{stat="dead"})', exported) == [
        "q: cekura_queue_messages has no label 'stat'"
    ]
    assert promql.usage_problems("q", "sum by (result) (rate(cekura_jobs_finished_total[5m]))", exported) == [
        "q: grouping label 'result' is on none of its metrics"
    ]


@needs_promtool
def test_a_dashboard_query_that_does_not_parse_fails(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "cekura-worker.json").read_text())
    panel = next(p for p in dashboard["panels"] if p.get("title") == "Poll lateness")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace("(le)", "(le")
    path = tmp_path / "cekura-worker.json"
    path.write_text(json.dumps(dashboard))

    (problem,) = monitoring.dashboard_problems(path)
    assert problem.startswith("promtool check rules cekura-worker.json: ")
    assert "(panel 'Poll lateness' A)" in problem
    assert 'unexpected "(" in grouping opts' in problem


@needs_promtool
def test_a_rule_change_its_unit_tests_disagree_with_fails(deploy_copy: Path) -> None:
    rules = deploy_copy / "prometheus" / "cekura-worker.rules.yml"
    rules.write_text(
        rules.read_text().replace(
            "max by (namespace) (cekura_requests_lag) > 0", "max by (namespace) (cekura_requests_lag) > 500"
        )
    )

    (problem,) = monitoring.rules_problems(rules, rules.with_name("cekura-worker.rules.test.yml"))
    assert problem.startswith("promtool test rules cekura-worker.rules.test.yml")
    assert "CekuraRequestLag" in problem
