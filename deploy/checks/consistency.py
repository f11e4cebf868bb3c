"""What schemas can't see: references between the rendered objects, and the places where the manifests must agree
with the worker's settings (a ConfigMap key the worker would silently ignore, a KEDA trigger on another stream
than the one the workers read, a grace period shorter than the worker's shutdown bound).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from config.settings import Settings
from deploy.checks.manifests import Object, name_of

#: Seconds the worker may take to exit after SIGTERM beyond CEKURA_SHUTDOWN_TIMEOUT_S (README, "Graceful shutdown").
DEFAULT_SHUTDOWN_SLACK_S = 3

#: A `namespace="..."` matcher in a PromQL query.
_NAMESPACE_MATCHER = re.compile(r'\bnamespace\s*=\s*"([^"]*)"')

#: KEDA's triggers on a Redis stream: a single Redis, and Redis behind Sentinel (deploy/overlays/sentinel).
STREAM_TRIGGERS = ("redis-streams", "redis-sentinel-streams")

#: Where KEDA's redis-sentinel-streams scaler (v2.20.2 `pkg/scalers/redis_scaler.go`, `redisConnectionInfo`) takes
#: the Sentinels' addresses and the primary's name from: the trigger's metadata, its authentication parameters, or
#: (`...FromEnv`) a variable of the scale target. Without either it can't find the primary.
_SENTINEL_ADDRESS_KEYS = frozenset({"address", "addresses", "addressesFromEnv", "hosts", "hostsFromEnv"})
_SENTINEL_MASTER_KEYS = frozenset({"sentinelMaster", "sentinelMasterFromEnv"})


def _index(objects: Iterable[Object]) -> dict[tuple[str, str, str], Object]:
    return {
        (
            obj.get("kind", ""),
            obj.get("metadata", {}).get("namespace", ""),
            obj.get("metadata", {}).get("name", ""),
        ): obj
        for obj in objects
    }


def _data(obj: Object) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's keys (values are not needed, only which keys exist)."""
    return {**obj.get("data", {}), **obj.get("stringData", {})}


def _worker_env(objects: list[Object], index: dict[tuple[str, str, str], Object], deployment: Object) -> dict[str, str]:
    """The environment the Deployment's first container gets from its ConfigMaps and Secrets (Secret values opaque)."""
    namespace = deployment["metadata"].get("namespace", "")
    env: dict[str, str] = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = index.get((kind, namespace, source[key]["name"]))
                if ref is not None:
                    env.update(_data(ref) if kind == "ConfigMap" else dict.fromkeys(_data(ref), ""))
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def reference_problems(objects: list[Object]) -> list[str]:
    """References that name no rendered object: envFrom, service account, KEDA's target, auth and Secret keys."""
    index = _index(objects)
    problems = []
    for obj in objects:
        namespace = obj.get("metadata", {}).get("namespace", "")
        spec = obj.get("spec") or {}
        wanted: list[tuple[str, str, str | None]] = []  # (kind, name, key the object must have)
        if obj.get("kind") == "Deployment":
            pod = spec["template"]["spec"]
            if pod.get("serviceAccountName"):
                wanted.append(("ServiceAccount", pod["serviceAccountName"], None))
            for container in pod.get("containers", []):
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        wanted.append(("ConfigMap", source["configMapRef"]["name"], None))
                    if "secretRef" in source:
                        wanted.append(("Secret", source["secretRef"]["name"], None))
        elif obj.get("kind") == "ScaledObject":
            target = spec["scaleTargetRef"]
            wanted.append((target.get("kind", "Deployment"), target["name"], None))
            for trigger in spec["triggers"]:
                if "authenticationRef" in trigger:
                    ref = trigger["authenticationRef"]
                    wanted.append((ref.get("kind", "TriggerAuthentication"), ref["name"], None))
        elif obj.get("kind") == "TriggerAuthentication":
            wanted += [("Secret", ref["name"], ref["key"]) for ref in spec.get("secretTargetRef", [])]
        for kind, name, key in wanted:
            target_obj = index.get((kind, namespace, name))
            if target_obj is None:
                problems.append(f"{name_of(obj)}: refers to {kind} {name}, which is not rendered")
            elif key is not None and key not in _data(target_obj):
                problems.append(f"{name_of(obj)}: refers to key {key!r} of {kind} {name}, which has no such key")
    return problems


def settings_problems(objects: list[Object]) -> list[str]:
    """Where the manifests must agree with the worker's settings and with each other."""
    index = _index(objects)
    problems = []
    known = {name.upper() for name in Settings.model_fields}
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"].startswith("cekura-worker-settings"):
            problems += [
                f"{name_of(obj)}: {key} is not a setting of the worker (it would be ignored)"
                for key in sorted(_data(obj))
                if key not in known
            ]
    for deployment in (obj for obj in objects if obj.get("kind") == "Deployment"):
        problems += _deployment_problems(objects, index, deployment)
    return problems


def _deployment_problems(
    objects: list[Object], index: dict[tuple[str, str, str], Object], deployment: Object
) -> list[str]:
    where = name_of(deployment)
    env = _worker_env(objects, index, deployment)
    defaults = Settings.model_fields
    setting: dict[str, Any] = {
        name: env.get(name.upper(), defaults[name].default)
        for name in (
            "cekura_shutdown_timeout_s",
            "cekura_metrics_port",
            "cekura_requests_stream",
            "cekura_intake_group",
        )
    }
    problems = []
    pod = deployment["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    bound = float(setting["cekura_shutdown_timeout_s"]) + DEFAULT_SHUTDOWN_SLACK_S
    if grace <= bound:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace} must exceed the worker's shutdown bound {bound:g} s"
        )
    port = setting["cekura_metrics_port"]
    ports = {p.get("name"): p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    if port is None or ports.get("metrics") != int(port):
        problems.append(f"{where}: container port `metrics` {ports.get('metrics')} is not CEKURA_METRICS_PORT {port}")
    annotation = deployment["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
    if annotation is not None and annotation != str(port):
        problems.append(f"{where}: annotation prometheus.io/port {annotation} is not CEKURA_METRICS_PORT {port}")

    namespace = deployment["metadata"].get("namespace", "")
    for scaled in (o for o in objects if o.get("kind") == "ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
            continue
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger.get("metadata", {})
            if trigger["type"] == "redis-sentinel-streams":
                problems += _sentinel_trigger_problems(index, scaled, trigger)
            if trigger["type"] in STREAM_TRIGGERS:
                if meta.get("stream") != setting["cekura_requests_stream"]:
                    problems.append(f"{name_of(scaled)}: stream {meta.get('stream')!r} is not CEKURA_REQUESTS_STREAM")
                if meta.get("consumerGroup") != setting["cekura_intake_group"]:
                    problems.append(
                        f"{name_of(scaled)}: consumerGroup {meta.get('consumerGroup')!r} is not CEKURA_INTAKE_GROUP"
                    )
            if trigger["type"] == "prometheus":
                for found in _NAMESPACE_MATCHER.findall(meta.get("query", "")):
                    if found != namespace:
                        problems.append(
                            f"{name_of(scaled)}: query selects namespace {found!r}, the workers run in {namespace!r}"
                        )
    return problems


def _sentinel_trigger_problems(
    index: dict[tuple[str, str, str], Object], scaled: Object, trigger: dict[str, Any]
) -> list[str]:
    """A redis-sentinel-streams trigger that names no Sentinels or no primary (in its metadata or its
    TriggerAuthentication's parameters): KEDA accepts the object and the scaler fails only once it runs."""
    given = set(trigger.get("metadata", {}))
    ref = trigger.get("authenticationRef")
    if ref is not None:
        namespace = scaled["metadata"].get("namespace", "")
        auth = index.get((ref.get("kind", "TriggerAuthentication"), namespace, ref["name"])) or {}
        spec = auth.get("spec") or {}
        given |= {item["parameter"] for key in ("secretTargetRef", "env") for item in spec.get(key, [])}
    where = f"{name_of(scaled)} trigger {trigger.get('name')}"
    problems = []
    if not given & _SENTINEL_ADDRESS_KEYS:
        problems.append(f"{where}: redis-sentinel-streams names no Sentinels (`addresses`, host:port, comma-separated)")
    if not given & _SENTINEL_MASTER_KEYS:
        problems.append(f"{where}: redis-sentinel-streams names no `sentinelMaster` (the service name in REDIS_URL)")
    return problems
