"""What schemas can't see: references between the rendered objects, and the places where the manifests must agree
with the worker's settings (a ConfigMap key the worker would silently ignore, a KEDA trigger on another stream
than the one the workers read, a grace period shorter than the worker's shutdown bound). The webhook receiver's
checks are in `deploy.checks.webhooks`, which uses the helpers here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from pydantic import TypeAdapter

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

_BOOL = TypeAdapter(bool)


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


def _values(obj: Object, secrets: bool) -> dict[str, str]:
    """A ConfigMap's data; a Secret's keys, with their decoded values if `secrets` (compared, never shown) or ""."""
    if obj.get("kind") != "Secret":
        return {key: str(value) for key, value in _data(obj).items()}
    if not secrets:
        return dict.fromkeys(_data(obj), "")
    decoded = {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in obj.get("data", {}).items()}
    return {**decoded, **obj.get("stringData", {})}


def _env_entries(
    index: dict[tuple[str, str, str], Object], namespace: str, container: dict[str, Any], secrets: bool = False
) -> dict[str, tuple[str, str]]:
    """{variable: (value, where it comes from: "ConfigMap", "Secret" or "value")} of a container: envFrom, then env
    (plain values, configMapKeyRef, secretKeyRef). Secret values are "" unless `secrets`."""
    env: dict[str, tuple[str, str]] = {}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = index.get((kind, namespace, source[key]["name"]))
                if ref is not None:
                    env.update({name: (value, kind) for name, value in _values(ref, secrets).items()})
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = (str(item.get("value", "")), "value")
            continue
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in source:
                ref = index.get((kind, namespace, source[key]["name"]))
                values = _values(ref, secrets) if ref is not None else {}
                if source[key]["key"] in values:
                    env[item["name"]] = (values[source[key]["key"]], kind)
    return env


def _env(
    index: dict[tuple[str, str, str], Object], namespace: str, container: dict[str, Any], secrets: bool = False
) -> dict[str, str]:
    return {name: value for name, (value, _) in _env_entries(index, namespace, container, secrets).items()}


def _worker_env(objects: list[Object], index: dict[tuple[str, str, str], Object], deployment: Object) -> dict[str, str]:
    """The environment the Deployment's first container gets from its ConfigMaps and Secrets (Secret values opaque)."""
    namespace = deployment["metadata"].get("namespace", "")
    return _env(index, namespace, deployment["spec"]["template"]["spec"]["containers"][0])


def _subcommand(container: dict[str, Any]) -> tuple[str, list[str]]:
    """The `cekura-worker` subcommand a container runs and its options: the image's ENTRYPOINT is `cekura-worker`
    and its CMD `run`; ("", []) for a container that runs something else."""
    command = [str(word) for word in container.get("command") or []]
    args = [str(word) for word in container.get("args") or []]
    if command and PurePosixPath(command[0]).name != "cekura-worker":
        return "", []
    words = [*command[1:], *args] if command else (args or ["run"])
    return (words[0], words[1:]) if words else ("", [])


def _option(words: list[str], name: str, default: str) -> str:
    """The value of `--name value` or `--name=value` in `words` (the last one wins, as argparse does)."""
    value = default
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(name + "="):
            value = word.partition("=")[2]
    return value


def _runs(objects: Iterable[Object], subcommand: str) -> list[tuple[Object, dict[str, Any], list[str]]]:
    """(Deployment, container, options) of every container that runs `cekura-worker <subcommand>`."""
    found = []
    for deployment in (obj for obj in objects if obj.get("kind") == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            command, options = _subcommand(container)
            if command == subcommand:
                found.append((deployment, container, options))
    return found


def _selects(selector: dict[str, str], deployment: Object) -> bool:
    labels = deployment["spec"]["template"].get("metadata", {}).get("labels", {})
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _deployments_selected(objects: Iterable[Object], namespace: str, selector: dict[str, str]) -> list[Object]:
    return [
        obj
        for obj in objects
        if obj.get("kind") == "Deployment"
        and obj["metadata"].get("namespace", "") == namespace
        and _selects(selector, obj)
    ]


def reference_problems(objects: list[Object]) -> list[str]:
    """References that name no rendered object (envFrom and env's Secret/ConfigMap keys, service account, Ingress
    backends, KEDA's target, auth and Secret keys), and Services and PodDisruptionBudgets that select no pods."""
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
                for item in container.get("env", []):
                    for ref_kind, ref_field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        ref = (item.get("valueFrom") or {}).get(ref_field)
                        if ref is not None and not ref.get("optional"):
                            wanted.append((ref_kind, ref["name"], ref["key"]))
        elif obj.get("kind") == "Ingress":
            backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
            backends += [
                path["backend"] for rule in spec.get("rules", []) for path in (rule.get("http") or {}).get("paths", [])
            ]
            wanted += [("Service", backend["service"]["name"], None) for backend in backends if "service" in backend]
        elif obj.get("kind") in ("Service", "PodDisruptionBudget"):
            selector: dict[str, str] = spec.get("selector") or {}
            if obj["kind"] == "PodDisruptionBudget":
                selector = spec.get("selector", {}).get("matchLabels", {})
            if selector and not _deployments_selected(objects, namespace, selector):
                problems.append(f"{name_of(obj)}: its selector matches the pods of no rendered Deployment")
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
        if obj.get("kind") == "Secret" and obj["metadata"]["name"].startswith("cekura-worker-secrets"):
            problems += [
                f"{name_of(obj)}: {key} is not a setting of the worker (it would be ignored)"
                for key in sorted(_data(obj))
                if key not in known
            ]
    # The workers (`cekura-worker run`, the image's CMD); the webhook receiver is `webhook_problems`' business.
    for deployment in {id(d): d for d, _, _ in _runs(objects, "run")}.values():
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
