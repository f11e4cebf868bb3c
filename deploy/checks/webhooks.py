"""What schemas can't see about the webhook receiver (`cekura-worker webhooks`, deploy/components/webhooks): it is
reachable, on the workers' Redis, with its secret, and behind an Ingress that makes public its one path and nothing
else (`/metrics` shares its port).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr, ValidationError

from config.settings import DEFAULT_MIN_WEBHOOK_SECRET_LEN, Settings
from deploy.checks.consistency import _BOOL, _env, _env_entries, _index, _option, _runs, _selects
from deploy.checks.manifests import Object, name_of

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
