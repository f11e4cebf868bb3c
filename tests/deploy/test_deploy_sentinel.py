"""deploy/overlays/sentinel, the example's twin for a Redis behind Sentinel: it passes every manifest check, the
request-lag trigger is KEDA's redis-sentinel-streams aimed at the same Sentinels and service as the workers'
REDIS_URL, the Sentinels' password reaches the workers and KEDA, and the checks catch a sentinel trigger that
can't find the primary.

The trigger's fields are those of KEDA v2.20.2's `redisConnectionInfo` and `redisStreamsMetadata`
(`pkg/scalers/redis_scaler.go`, `redis_streams_scaler.go`) and its "Redis Streams (supports Redis Sentinel)" page.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from config.settings import load_settings, sentinel_parts
from deploy.checks import consistency, manifests, webhooks
from tests.deploy.support import DEPLOY

KEDA_CRDS = DEPLOY / "schemas" / "keda"


def _one(objects: list[manifests.Object], kind: str, name_prefix: str = "") -> manifests.Object:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    return found


def _named(objects: list[manifests.Object], kind: str, name: str) -> manifests.Object:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _secret(objects: list[manifests.Object], name_prefix: str) -> dict[str, str]:
    data = _one(objects, "Secret", name_prefix)["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def _secret_name(objects: list[manifests.Object]) -> str:
    return str(_one(objects, "Secret", "cekura-worker-secrets")["metadata"]["name"])


def _trigger(objects: list[manifests.Object], name: str) -> dict[str, Any]:
    triggers: list[dict[str, Any]] = _one(objects, "ScaledObject")["spec"]["triggers"]
    (found,) = [trigger for trigger in triggers if trigger["name"] == name]
    return found


def _unhashed(deployment: manifests.Object) -> manifests.Object:
    """The Deployment with the content hash kustomize appends to generated ConfigMap and Secret names cut off."""
    deployment = copy.deepcopy(deployment)
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        refs = [ref for source in container.get("envFrom", []) for ref in source.values()]
        refs += [ref for item in container.get("env", []) for ref in (item.get("valueFrom") or {}).values()]
        for ref in refs:
            ref["name"] = ref["name"].rsplit("-", 1)[0]
    return deployment


@pytest.fixture
def objects(rendered_sentinel: list[manifests.Object]) -> list[manifests.Object]:
    return copy.deepcopy(rendered_sentinel)


def test_the_overlay_renders_what_the_example_does(
    objects: list[manifests.Object], rendered: list[manifests.Object]
) -> None:
    assert sorted(o["kind"] for o in objects) == sorted(o["kind"] for o in rendered)
    assert all(o["metadata"].get("namespace") == "cekura" for o in objects if o["kind"] != "Namespace")
    # The same workers and webhook receiver: only the Secret they read (its content, hence its name) differs.
    for name in ("cekura-worker", "cekura-worker-webhooks"):
        assert _unhashed(_named(objects, "Deployment", name)) == _unhashed(_named(rendered, "Deployment", name))


def test_the_overlay_passes_every_manifest_check(objects: list[manifests.Object]) -> None:
    assert manifests.kubernetes_problems(objects) == []
    assert manifests.crd_problems(objects, KEDA_CRDS) == []
    assert consistency.reference_problems(objects) == []
    assert consistency.settings_problems(objects) == []
    assert webhooks.webhook_problems(objects) == []


def test_request_lag_reads_the_stream_through_the_sentinels(objects: list[manifests.Object]) -> None:
    trigger = _trigger(objects, "request-lag")
    assert trigger["type"] == "redis-sentinel-streams"
    assert trigger["authenticationRef"] == {"name": "cekura-worker-keda-redis"}
    meta = trigger["metadata"]
    assert set(meta) == {"addresses", "sentinelMaster", "stream", "consumerGroup", "lagCount", "activationLagCount"}
    assert (meta["stream"], meta["consumerGroup"]) == ("cekura:requests", "cekura-worker")
    assert (meta["lagCount"], meta["activationLagCount"]) == ("100", "0")

    # The Sentinels and the service the workers use, as REDIS_URL names them.
    url = sentinel_parts(_secret(objects, "cekura-worker-secrets")["REDIS_URL"])
    assert [address.strip() for address in meta["addresses"].split(",")] == [f"{h}:{p}" for h, p in url.sentinels]
    assert len(url.sentinels) == 3
    assert meta["sentinelMaster"] == url.service


def test_the_prometheus_triggers_are_the_examples(
    objects: list[manifests.Object], rendered: list[manifests.Object]
) -> None:
    # They ask Prometheus for gauges the workers serve, never Redis: nothing Sentinel-specific about them.
    for name in ("jobs-in-flight", "steps-due", "oldest-due"):
        assert _trigger(objects, name) == _trigger(rendered, name)


def test_the_sentinels_password_reaches_the_workers_and_keda(objects: list[manifests.Object]) -> None:
    worker = _secret(objects, "cekura-worker-secrets")
    keda = _secret(objects, "cekura-worker-keda-redis")
    assert set(worker) == {"CEKURA_API_KEY", "REDIS_URL", "REDIS_SENTINEL_PASSWORD", "CEKURA_WEBHOOK_SECRET"}
    assert set(keda) == {"username", "password", "sentinelPassword", "tls"}
    assert keda["sentinelPassword"] == worker["REDIS_SENTINEL_PASSWORD"]
    # The webhook receiver finds the primary as the workers do: same URL, and the Sentinels' password.
    (container,) = _named(objects, "Deployment", "cekura-worker-webhooks")["spec"]["template"]["spec"]["containers"]
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert refs["REDIS_SENTINEL_PASSWORD"]["key"] == "REDIS_SENTINEL_PASSWORD"
    assert refs["REDIS_SENTINEL_PASSWORD"]["name"] == refs["REDIS_URL"]["name"] == _secret_name(objects)
    # TLS for both or neither: rediss+sentinel:// for the workers, `tls: enable` for KEDA.
    assert sentinel_parts(worker["REDIS_URL"]).tls is (keda["tls"] == "enable") is True

    auth = _one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {ref["parameter"]: ref["key"] for ref in auth} == {
        "username": "username",
        "password": "password",
        "sentinelPassword": "sentinelPassword",
        "tls": "tls",
    }


def test_the_placeholders_are_settings_the_worker_accepts(objects: list[manifests.Object]) -> None:
    worker = _secret(objects, "cekura-worker-secrets")
    settings = load_settings(
        redis_url=worker["REDIS_URL"], redis_sentinel_password=worker["REDIS_SENTINEL_PASSWORD"], _env_file=None
    )
    assert settings.redis_url.get_secret_value().startswith("rediss+sentinel://")
    assert settings.redis_sentinel_password is not None


def test_a_sentinel_trigger_on_another_stream_fails(objects: list[manifests.Object]) -> None:
    _trigger(objects, "request-lag")["metadata"]["stream"] = "orders:requests"

    assert consistency.settings_problems(objects) == [
        "ScaledObject cekura/cekura-worker: stream 'orders:requests' is not CEKURA_REQUESTS_STREAM"
    ]


def test_a_sentinel_trigger_that_cannot_find_the_primary_fails(objects: list[manifests.Object]) -> None:
    meta = _trigger(objects, "request-lag")["metadata"]
    del meta["sentinelMaster"], meta["addresses"]

    assert consistency.settings_problems(objects) == [
        "ScaledObject cekura/cekura-worker trigger request-lag: redis-sentinel-streams names no Sentinels "
        "(`addresses`, host:port, comma-separated)",
        "ScaledObject cekura/cekura-worker trigger request-lag: redis-sentinel-streams names no `sentinelMaster` "
        "(the service name in REDIS_URL)",
    ]


def test_the_primary_may_be_named_by_the_trigger_authentication(objects: list[manifests.Object]) -> None:
    del _trigger(objects, "request-lag")["metadata"]["sentinelMaster"]
    secret = _one(objects, "Secret", "cekura-worker-keda-redis")
    secret["data"]["sentinelMaster"] = base64.b64encode(b"cekura").decode()
    refs = _one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]
    refs.append({"parameter": "sentinelMaster", "name": secret["metadata"]["name"], "key": "sentinelMaster"})

    assert consistency.settings_problems(objects) == []
    assert consistency.reference_problems(objects) == []
