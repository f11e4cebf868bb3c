"""deploy/components/webhooks in the example and sentinel overlays: the webhook receiver (`cekura-worker webhooks`)
runs as locked down as the workers, on their Redis and settings, with its secret and not the Cekura key, and its
Ingress makes public `POST /webhooks/cekura` and nothing else (`/metrics` and `/healthz` share the port). The
checks behind `make validate-deploy` catch each way of getting that wrong; docker-compose.yml's `webhooks` service
agrees with the simulator that delivers to it.
"""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import pytest
import yaml

from config.settings import load_settings
from deploy.checks import consistency, manifests, webhooks
from tests.deploy.support import REPO

RECEIVER = "cekura-worker-webhooks"
SECRET_KEY = "CEKURA_WEBHOOK_SECRET"


def _named(objects: list[manifests.Object], kind: str, name: str) -> manifests.Object:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _prefixed(objects: list[manifests.Object], kind: str, prefix: str) -> manifests.Object:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    return found


def _container(objects: list[manifests.Object], name: str = RECEIVER) -> dict[str, Any]:
    (container,) = _named(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return container


def _ingress(objects: list[manifests.Object]) -> dict[str, Any]:
    (ingress,) = [o for o in objects if o["kind"] == "Ingress"]
    return ingress


@pytest.fixture(params=["example", "sentinel"])
def objects(request: pytest.FixtureRequest) -> list[manifests.Object]:
    rendered = request.getfixturevalue("rendered" if request.param == "example" else "rendered_sentinel")
    return copy.deepcopy(rendered)


def test_the_receiver_passes_every_check(objects: list[manifests.Object]) -> None:
    assert webhooks.webhook_problems(objects) == []
    assert consistency.reference_problems(objects) == []
    assert consistency.settings_problems(objects) == []
    assert manifests.kubernetes_problems([o for o in objects if RECEIVER in o["metadata"]["name"]]) == []


def test_the_ingress_exposes_only_the_webhook_path(objects: list[manifests.Object]) -> None:
    ingress = _ingress(objects)
    spec = ingress["spec"]
    assert "defaultBackend" not in spec
    routes = [(rule.get("host"), path) for rule in spec["rules"] for path in rule["http"]["paths"]]
    assert [(path["path"], path["pathType"]) for _, path in routes] == [("/webhooks/cekura", "Exact")]
    ((host, path),) = routes
    assert path["backend"] == {"service": {"name": RECEIVER, "port": {"name": "http"}}}
    assert not any("metrics" in str(value) or "healthz" in str(value) for value in (spec["rules"], spec["tls"]))
    # Over TLS, for that host, with a certificate Secret (a placeholder to replace).
    assert spec["tls"] == [{"hosts": [host], "secretName": spec["tls"][0]["secretName"]}]
    assert host and spec["tls"][0]["secretName"]
    # ingress-nginx would refuse bodies over 1 MiB; the receiver takes up to CEKURA_WEBHOOK_MAX_BYTES (8 MiB).
    assert ingress["metadata"]["annotations"] == {webhooks.NGINX_BODY_SIZE: "8m"}


def test_the_ingress_reaches_the_receivers_port_only_through_ready_pods(objects: list[manifests.Object]) -> None:
    service = _named(objects, "Service", RECEIVER)["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "cekura-worker", "app.kubernetes.io/component": "webhooks"}
    assert service["ports"] == [{"name": "http", "port": 8090, "targetPort": "http", "protocol": "TCP"}]
    assert "publishNotReadyAddresses" not in service
    assert _container(objects)["ports"] == [{"name": "http", "containerPort": 8090, "protocol": "TCP"}]
    # The workers' Service and budget don't take the receiver's pods in, nor the receiver's the workers'.
    worker_labels = _named(objects, "Deployment", "cekura-worker")["spec"]["template"]["metadata"]["labels"]
    receiver_labels = _named(objects, "Deployment", RECEIVER)["spec"]["template"]["metadata"]["labels"]
    for kind, name, selects in (
        ("Service", "cekura-worker-metrics", worker_labels),
        ("PodDisruptionBudget", "cekura-worker", worker_labels),
        ("Service", RECEIVER, receiver_labels),
        ("PodDisruptionBudget", RECEIVER, receiver_labels),
    ):
        spec = _named(objects, kind, name)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= selects.items()
        assert not selector.items() <= (worker_labels if selects is receiver_labels else receiver_labels).items()


def test_the_receiver_runs_like_the_workers(objects: list[manifests.Object]) -> None:
    receiver = _named(objects, "Deployment", RECEIVER)
    worker = _named(objects, "Deployment", "cekura-worker")
    pod, worker_pod = receiver["spec"]["template"]["spec"], worker["spec"]["template"]["spec"]
    container, worker_container = _container(objects), _container(objects, "cekura-worker")
    assert receiver["spec"]["replicas"] == 2
    assert container["args"] == ["webhooks", "--host", "0.0.0.0", "--port", "8090"]
    assert container["image"] == worker_container["image"]
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks"):
        assert pod[key] == worker_pod[key], key
    assert container["securityContext"] == worker_container["securityContext"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    assert receiver["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8090",
        "prometheus.io/path": "/metrics",
    }
    budget = _named(objects, "PodDisruptionBudget", RECEIVER)["spec"]
    assert budget["maxUnavailable"] == 1 < receiver["spec"]["replicas"]


def test_the_receiver_has_its_secret_and_the_workers_settings_but_not_the_cekura_key(
    objects: list[manifests.Object],
) -> None:
    container, worker_container = _container(objects), _container(objects, "cekura-worker")
    settings_map = _prefixed(objects, "ConfigMap", "cekura-worker-settings")
    secret = _prefixed(objects, "Secret", "cekura-worker-secrets")
    assert container["envFrom"] == [{"configMapRef": {"name": settings_map["metadata"]["name"]}}]
    assert {"configMapRef": {"name": settings_map["metadata"]["name"]}} in worker_container["envFrom"]
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert set(refs) == {"REDIS_URL", "REDIS_SENTINEL_PASSWORD", SECRET_KEY}
    assert {ref["name"] for ref in refs.values()} == {secret["metadata"]["name"]}
    assert {name: ref["key"] for name, ref in refs.items()} == {name: name for name in refs}
    assert refs["REDIS_SENTINEL_PASSWORD"].get("optional") is True
    assert not refs[SECRET_KEY].get("optional")

    # Webhooks on for the workers, and a placeholder secret the receiver would accept.
    assert settings_map["data"]["CEKURA_WEBHOOKS"] == "true"
    placeholder = base64.b64decode(secret["data"][SECRET_KEY]).decode()
    assert placeholder.startswith("replace-with-")
    assert load_settings(cekura_webhook_secret=placeholder, cekura_webhooks=True, _env_file=None).cekura_webhooks


# --- the checks catch what would break it ----------------------------------------------------------------------


def _paths(objects: list[manifests.Object]) -> list[dict[str, Any]]:
    paths: list[dict[str, Any]] = _ingress(objects)["spec"]["rules"][0]["http"]["paths"]
    return paths


def test_a_second_path_on_the_ingress_fails(objects: list[manifests.Object]) -> None:
    paths = _paths(objects)
    paths.append({**copy.deepcopy(paths[0]), "path": "/metrics"})

    (problem,) = webhooks.webhook_problems(objects)
    assert problem == (
        "Ingress cekura/cekura-worker-webhooks: routes '/metrics' (Exact): only /webhooks/cekura (pathType Exact) "
        "may be public, the receiver serves /metrics and /healthz on the same port"
    )


@pytest.mark.parametrize(
    ("path", "path_type"), [("/webhooks/cekura", "Prefix"), ("/", "Prefix"), ("/webhooks", "Exact")]
)
def test_a_wider_path_fails(objects: list[manifests.Object], path: str, path_type: str) -> None:
    _paths(objects)[0].update(path=path, pathType=path_type)

    (problem,) = webhooks.webhook_problems(objects)
    assert f"routes {path!r} ({path_type}): only /webhooks/cekura (pathType Exact) may be public" in problem


def test_a_default_backend_fails(objects: list[manifests.Object]) -> None:
    _ingress(objects)["spec"]["defaultBackend"] = {"service": {"name": RECEIVER, "port": {"name": "http"}}}

    assert webhooks.webhook_problems(objects) == [
        "Ingress cekura/cekura-worker-webhooks: has a defaultBackend: only /webhooks/cekura (Exact) may be public"
    ]


def test_a_host_without_tls_fails(objects: list[manifests.Object]) -> None:
    spec = _ingress(objects)["spec"]
    host = spec["rules"][0]["host"]
    del spec["tls"]

    assert webhooks.webhook_problems(objects) == [
        f"Ingress cekura/cekura-worker-webhooks: serves {host} without TLS (a `tls` entry with its host and a "
        "secretName): Cekura would send X-CEKURA-SECRET in clear text"
    ]
    spec["tls"] = [{"hosts": ["*." + host.split(".", 1)[1]], "secretName": "wildcard-tls"}]
    assert webhooks.webhook_problems(objects) == []


def test_an_ingress_aimed_at_the_wrong_port_fails(objects: list[manifests.Object]) -> None:
    _paths(objects)[0]["backend"]["service"]["port"] = {"number": 9100}

    (problem,) = webhooks.webhook_problems(objects)
    assert problem == (
        "Ingress cekura/cekura-worker-webhooks: routes '/webhooks/cekura' (Exact) to Service cekura-worker-webhooks "
        "port 9100, which doesn't reach the receiver's port 8090"
    )


def test_a_body_limit_below_the_receivers_fails(objects: list[manifests.Object]) -> None:
    annotations = _ingress(objects)["metadata"]["annotations"]
    annotations[webhooks.NGINX_BODY_SIZE] = "1m"

    (problem,) = webhooks.webhook_problems(objects)
    assert "ingress-nginx takes bodies up to 1m" in problem
    assert "less than the CEKURA_WEBHOOK_MAX_BYTES 8388608 of Deployment cekura/cekura-worker-webhooks" in problem
    # ingress-nginx's own default (1m) counts when the class is nginx and the annotation is missing
    del annotations[webhooks.NGINX_BODY_SIZE]
    assert len(webhooks.webhook_problems(objects)) == 1
    _prefixed(objects, "ConfigMap", "cekura-worker-settings")["data"]["CEKURA_WEBHOOK_MAX_BYTES"] = "1048576"
    assert webhooks.webhook_problems(objects) == []


def test_a_receiver_on_loopback_fails(objects: list[manifests.Object]) -> None:
    _container(objects)["args"] = ["webhooks", "--port=8090"]

    assert webhooks.webhook_problems(objects) == [
        "Deployment cekura/cekura-worker-webhooks container webhooks: listens on 127.0.0.1 (--host): its Service and "
        "probes can't reach it, use 0.0.0.0"
    ]


def test_the_port_annotation_and_probes_must_be_the_receivers(objects: list[manifests.Object]) -> None:
    container = _container(objects)
    container["args"][-1] = "8091"
    container["readinessProbe"]["httpGet"]["path"] = "/ready"

    problems = webhooks.webhook_problems(objects)
    where = "Deployment cekura/cekura-worker-webhooks container webhooks"
    assert problems == [
        f"{where}: no container port is the receiver's --port 8091",
        f"{where}: annotation prometheus.io/port 8090 is not the receiver's --port 8091",
        f"{where}: readinessProbe asks port http, not the receiver's --port 8091",
        f"{where}: readinessProbe asks /ready, which the receiver doesn't serve (/healthz)",
        f"{where}: livenessProbe asks port http, not the receiver's --port 8091",
        "Ingress cekura/cekura-worker-webhooks: routes '/webhooks/cekura' (Exact) to Service cekura-worker-webhooks "
        "port http, which doesn't reach the receiver's port 8091",
    ]


def test_the_webhook_secret_must_come_from_a_secret_and_be_long_enough(objects: list[manifests.Object]) -> None:
    container = _container(objects)
    (item,) = [item for item in container["env"] if item["name"] == SECRET_KEY]
    where = "Deployment cekura/cekura-worker-webhooks container webhooks"

    secret = _prefixed(objects, "Secret", "cekura-worker-secrets")
    secret["data"][SECRET_KEY] = base64.b64encode(b"too-short").decode()
    assert webhooks.webhook_problems(objects) == [
        f"{where}: CEKURA_WEBHOOK_SECRET is shorter than 16 characters: the receiver refuses it "
        "(the value is not shown)"
    ]
    assert "too-short" not in str(webhooks.webhook_problems(objects))

    item.pop("valueFrom")
    item["value"] = "a-long-enough-secret-in-plain-sight"
    assert webhooks.webhook_problems(objects) == [
        f"{where}: CEKURA_WEBHOOK_SECRET comes from a value, not a Secret (the value is not shown)"
    ]

    container["env"].remove(item)
    assert webhooks.webhook_problems(objects) == [
        f"{where}: no CEKURA_WEBHOOK_SECRET: the receiver refuses to start without it"
    ]


def test_the_receiver_must_find_the_jobs_where_the_workers_keep_them(objects: list[manifests.Object]) -> None:
    container = _container(objects)
    container["env"] += [{"name": "CEKURA_KEY_PREFIX", "value": "orders"}]
    (url,) = [item for item in container["env"] if item["name"] == "REDIS_URL"]
    url["valueFrom"]["secretKeyRef"]["key"] = "CEKURA_API_KEY"  # a Secret value that is not the workers' URL

    where = "Deployment cekura/cekura-worker-webhooks container webhooks"
    problems = webhooks.webhook_problems(objects)
    assert problems == [
        f"{where}: REDIS_URL is not that of the workers (Deployment cekura/cekura-worker) (values not shown): its "
        "webhooks would hasten no job",
        f"{where}: CEKURA_KEY_PREFIX is not that of the workers (Deployment cekura/cekura-worker): its webhooks would "
        "hasten no job",
    ]
    assert "replace-with" not in str(problems)


def test_webhooks_on_without_a_receiver_fails(objects: list[manifests.Object]) -> None:
    objects[:] = [o for o in objects if RECEIVER not in o["metadata"]["name"]]

    assert webhooks.webhook_problems(objects) == [
        "Deployment cekura/cekura-worker: CEKURA_WEBHOOKS is on but no `cekura-worker webhooks` Deployment is "
        "rendered: evaluator runs would be polled only every CEKURA_WEBHOOK_SAFETY_NET_S"
    ]
    _prefixed(objects, "ConfigMap", "cekura-worker-settings")["data"]["CEKURA_WEBHOOKS"] = "false"
    assert webhooks.webhook_problems(objects) == []


def test_an_ingress_in_front_of_something_else_is_not_checked(objects: list[manifests.Object]) -> None:
    ingress = copy.deepcopy(_ingress(objects))
    ingress["metadata"]["name"] = "elsewhere"
    ingress["spec"]["rules"][0]["http"]["paths"][0].update(path="/", pathType="Prefix")
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "cekura-worker-metrics"
    objects.append(ingress)

    assert webhooks.webhook_problems(objects) == []


# --- docker compose ---------------------------------------------------------------------------------------------

_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _interpolated(value: Any) -> str:
    return _DEFAULTED.sub(lambda match: match.group(2), str(value))


def test_compose_runs_the_receiver_where_the_simulator_delivers() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    webhooks, simulator, worker = services["webhooks"], services["simulator"], services["worker"]
    assert "profiles" not in webhooks
    assert webhooks["command"] == ["webhooks", "--host", "0.0.0.0", "--port", "8090"]
    assert webhooks["ports"] == ["127.0.0.1:8090:8090"]
    assert webhooks["image"] == worker["image"] and webhooks["depends_on"] == {
        "redis": {"condition": "service_healthy"}
    }
    assert "/healthz" in " ".join(webhooks["healthcheck"]["test"])
    env = {key: _interpolated(value) for key, value in webhooks["environment"].items()}
    assert env["REDIS_URL"] == _interpolated(worker["environment"]["REDIS_URL"])
    load_settings(cekura_webhook_secret=env[SECRET_KEY], _env_file=None)  # long enough

    command = [_interpolated(word) for word in simulator["command"]]
    option = {command[i]: command[i + 1] for i in range(1, len(command) - 1, 2)}
    assert option["--webhook-url"] == "http://webhooks:8090/webhooks/cekura"
    assert option["--webhook-secret"] == env[SECRET_KEY]
    assert _interpolated(worker["environment"]["CEKURA_WEBHOOKS"]) == "false"
