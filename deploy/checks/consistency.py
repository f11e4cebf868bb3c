"""What schemas can't see: references between the rendered objects, and the places where the manifests must agree
with the worker's settings (a ConfigMap key the worker would silently ignore, a KEDA trigger on another stream
than the one the workers read, a grace period shorter than the worker's shutdown bound), and the webhook receiver
(`cekura-worker webhooks`, deploy/components/webhooks): reachable, on the workers' Redis, with its secret, and
behind an Ingress that makes public its one path and nothing else (`/metrics` shares its port).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from pydantic import SecretStr, TypeAdapter, ValidationError

from config.settings import DEFAULT_MIN_WEBHOOK_SECRET_LEN, Settings
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

#: The one path of the webhook receiver Cekura must reach (worker/webhooks/app.py). `/metrics` and `/healthz` are
#: served on the same port, so an Ingress in front of the receiver routes this path, Exact, and nothing else.
WEBHOOK_PATH = "/webhooks/cekura"

#: What the receiver answers GET on (its probes must ask one of these), and its defaults (worker/webhooks).
_RECEIVER_GET_PATHS = frozenset({"/healthz", "/metrics"})
DEFAULT_RECEIVER_HOST, DEFAULT_RECEIVER_PORT = "127.0.0.1", "8090"
#: Addresses that listen on every interface: anything else is out of reach of the pod's Service and probes.
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", "[::]"})

#: The settings the receiver and the workers must share: where the jobs are, and how a hastened poll is queued.
_SHARED_WITH_WORKERS = ("redis_url", "redis_sentinel_password", "cekura_key_prefix", "cekura_queue")
_SECRET_SETTINGS = frozenset({"redis_url", "redis_sentinel_password"})

#: ingress-nginx's request body limit, and the limit it applies without the annotation.
NGINX_BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"
DEFAULT_NGINX_BODY_SIZE = "1m"
_NGINX_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")
_NGINX_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

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


def webhook_problems(objects: list[Object]) -> list[str]:
    """The webhook receiver (`cekura-worker webhooks`) and what routes to it: it listens where its port, probes and
    Service look, has its secret from a Secret, shares the workers' Redis and keys, and every Ingress in front of it
    makes public `WEBHOOK_PATH` (Exact) only, over TLS, with a body limit no smaller than CEKURA_WEBHOOK_MAX_BYTES.
    Workers with CEKURA_WEBHOOKS on and no receiver are a problem too: their evaluator runs would only be polled as
    a safety net."""
    index = _index(objects)
    receivers = _runs(objects, "webhooks")
    workers = _runs(objects, "run")
    problems = []
    for deployment, container, _ in workers:
        namespace = deployment["metadata"].get("namespace", "")
        flag = _env(index, namespace, container).get("CEKURA_WEBHOOKS", "false")
        try:
            on = _BOOL.validate_python(flag.strip())
        except ValidationError:
            continue  # not a boolean: the worker refuses to start, which its own checks don't cover either
        if on and not any(r["metadata"].get("namespace", "") == namespace for r, _, _ in receivers):
            problems.append(
                f"{name_of(deployment)}: CEKURA_WEBHOOKS is on but no `cekura-worker webhooks` Deployment is rendered: "
                "evaluator runs would be polled only every CEKURA_WEBHOOK_SAFETY_NET_S"
            )
    for deployment, container, options in receivers:
        problems += _receiver_problems(index, deployment, container, options, workers)
    for ingress in (obj for obj in objects if obj.get("kind") == "Ingress"):
        problems += _ingress_problems(index, ingress, receivers)
    return problems


def _setting(env: dict[str, str], name: str) -> str:
    """A setting's value as a container sees it: its variable, else the default (secrets included, never shown)."""
    if name.upper() in env:
        return env[name.upper()].strip()
    default = Settings.model_fields[name].default
    if isinstance(default, SecretStr):
        return default.get_secret_value()
    return "" if default is None else str(default)


def _container_port(container: dict[str, Any], port: Any) -> int | None:
    """A port given by number or by the name of one of the container's ports, as a number (None if unknown)."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def _receiver_problems(
    index: dict[tuple[str, str, str], Object],
    deployment: Object,
    container: dict[str, Any],
    options: list[str],
    workers: list[tuple[Object, dict[str, Any], list[str]]],
) -> list[str]:
    where = f"{name_of(deployment)} container {container['name']}"
    namespace = deployment["metadata"].get("namespace", "")
    problems = []
    host = _option(options, "--host", DEFAULT_RECEIVER_HOST)
    if host not in _ANY_ADDRESS:
        problems.append(f"{where}: listens on {host} (--host): its Service and probes can't reach it, use 0.0.0.0")
    port = _option(options, "--port", DEFAULT_RECEIVER_PORT)
    if not port.isdigit():
        return [*problems, f"{where}: --port {port!r} is not a port number"]
    if int(port) not in {p["containerPort"] for p in container.get("ports", [])}:
        problems.append(f"{where}: no container port is the receiver's --port {port}")
    annotation = deployment["spec"]["template"].get("metadata", {}).get("annotations", {}).get("prometheus.io/port")
    if annotation is not None and annotation != port:
        problems.append(f"{where}: annotation prometheus.io/port {annotation} is not the receiver's --port {port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = (container.get(probe) or {}).get("httpGet")
        if http is None:
            continue
        if _container_port(container, http.get("port")) != int(port):
            problems.append(f"{where}: {probe} asks port {http.get('port')}, not the receiver's --port {port}")
        if http.get("path", "/") not in _RECEIVER_GET_PATHS:
            problems.append(
                f"{where}: {probe} asks {http.get('path', '/')}, which the receiver doesn't serve (/healthz)"
            )

    entries = _env_entries(index, namespace, container, secrets=True)
    secret, origin = entries.get("CEKURA_WEBHOOK_SECRET", ("", ""))
    if not secret.strip():
        problems.append(f"{where}: no CEKURA_WEBHOOK_SECRET: the receiver refuses to start without it")
    elif origin != "Secret":
        problems.append(f"{where}: CEKURA_WEBHOOK_SECRET comes from a {origin}, not a Secret (the value is not shown)")
    elif len(secret.strip()) < DEFAULT_MIN_WEBHOOK_SECRET_LEN:
        problems.append(
            f"{where}: CEKURA_WEBHOOK_SECRET is shorter than {DEFAULT_MIN_WEBHOOK_SECRET_LEN} characters: the receiver "
            "refuses it (the value is not shown)"
        )
    env = {name: value for name, (value, _) in entries.items()}
    for worker, worker_container, _ in workers:
        if worker["metadata"].get("namespace", "") != namespace:
            continue
        worker_env = _env(index, namespace, worker_container, secrets=True)
        for name in _SHARED_WITH_WORKERS:
            if _setting(env, name) != _setting(worker_env, name):
                shown = " (values not shown)" if name in _SECRET_SETTINGS else ""
                problems.append(
                    f"{where}: {name.upper()} is not that of the workers ({name_of(worker)}){shown}: its webhooks "
                    "would hasten no job"
                )
    return problems


def _nginx_size(value: str) -> int | None:
    """An ingress-nginx size (`8m`, `512k`, `1048576`; 0 is no limit) in bytes, None when unreadable."""
    match = _NGINX_SIZE.match(value)
    return int(match.group(1)) * _NGINX_UNITS[match.group(2).lower()] if match else None


def _tls_covers(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return "." in host and host.split(".", 1)[1] == pattern[2:]
    return pattern == host


def _ingress_problems(
    index: dict[tuple[str, str, str], Object],
    ingress: Object,
    receivers: list[tuple[Object, dict[str, Any], list[str]]],
) -> list[str]:
    """An Ingress that routes to a receiver: WEBHOOK_PATH, Exact, only; every host under TLS; a body limit that fits."""
    namespace = ingress["metadata"].get("namespace", "")
    spec = ingress.get("spec") or {}
    where = name_of(ingress)

    def receiver_behind(backend: dict[str, Any]) -> tuple[Object, dict[str, Any], list[str]] | None:
        service_ref = backend.get("service") or {}
        service = index.get(("Service", namespace, service_ref.get("name", "")))
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        for receiver in receivers:
            if receiver[0]["metadata"].get("namespace", "") == namespace and _selects(selector, receiver[0]):
                return receiver
        return None

    routes = [
        (rule.get("host"), path, path["backend"])
        for rule in spec.get("rules", [])
        for path in (rule.get("http") or {}).get("paths", [])
    ]
    backends = [backend for _, _, backend in routes] + ([spec["defaultBackend"]] if "defaultBackend" in spec else [])
    if not any(receiver_behind(backend) for backend in backends):
        return []  # not in front of the receiver: none of these checks' business

    problems = []
    if "defaultBackend" in spec:
        problems.append(f"{where}: has a defaultBackend: only {WEBHOOK_PATH} (Exact) may be public")
    limits: list[tuple[str, int]] = []
    for _, path, backend in routes:
        shown = f"{path.get('path', '/')!r} ({path.get('pathType')})"
        if (path.get("path"), path.get("pathType")) != (WEBHOOK_PATH, "Exact"):
            problems.append(
                f"{where}: routes {shown}: only {WEBHOOK_PATH} (pathType Exact) may be public, the receiver serves "
                "/metrics and /healthz on the same port"
            )
        receiver = receiver_behind(backend)
        service_name = str((backend.get("service") or {}).get("name"))
        if receiver is None:
            problems.append(f"{where}: routes {shown} to Service {service_name}, which selects no webhook receiver")
            continue
        deployment, container, options = receiver
        port = _option(options, "--port", DEFAULT_RECEIVER_PORT)  # a bad one is reported by _receiver_problems
        wanted = backend["service"].get("port", {})
        service = index[("Service", namespace, service_name)]
        service_port = next(
            (
                p
                for p in service["spec"].get("ports", [])
                if ("name" in wanted and p.get("name") == wanted["name"])
                or ("number" in wanted and p.get("port") == wanted["number"])
            ),
            None,
        )
        target = None
        if service_port is not None:
            target = _container_port(container, service_port.get("targetPort", service_port["port"]))
        if port.isdigit() and target != int(port):
            problems.append(
                f"{where}: routes {shown} to Service {service_name} port {wanted.get('name', wanted.get('number'))}, "
                f"which doesn't reach the receiver's port {port}"
            )
        env = _env(index, namespace, container)
        max_bytes = _setting(env, "cekura_webhook_max_bytes")
        if max_bytes.isdigit():  # else the receiver refuses to start, and says why
            limits.append((name_of(deployment), int(max_bytes)))

    tls_hosts = [h for entry in spec.get("tls", []) if entry.get("secretName") for h in entry.get("hosts", [])]
    for host in sorted({str(host) for host, _, _ in routes if host}):
        if not any(_tls_covers(pattern, host) for pattern in tls_hosts):
            problems.append(
                f"{where}: serves {host} without TLS (a `tls` entry with its host and a secretName): Cekura would send "
                "X-CEKURA-SECRET in clear text"
            )
    if any(not host for host, _, _ in routes):
        problems.append(f"{where}: has a rule with no host: no TLS certificate covers it")

    annotations = ingress["metadata"].get("annotations") or {}
    nginx = NGINX_BODY_SIZE in annotations or "nginx" in str(spec.get("ingressClassName", ""))
    if nginx and limits:
        value = str(annotations.get(NGINX_BODY_SIZE, DEFAULT_NGINX_BODY_SIZE))
        size = _nginx_size(value)
        largest_of, largest = max(limits, key=lambda item: item[1])
        if size is None:
            problems.append(f"{where}: {NGINX_BODY_SIZE} {value!r} is not a size (e.g. 8m)")
        elif size != 0 and size < largest:
            problems.append(
                f"{where}: ingress-nginx takes bodies up to {value} ({NGINX_BODY_SIZE}), less than the "
                f"CEKURA_WEBHOOK_MAX_BYTES {largest} of {largest_of}: larger webhooks would be refused on the way"
            )
    return problems
