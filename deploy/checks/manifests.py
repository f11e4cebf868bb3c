"""Render an overlay with kustomize and validate every object: built-in kinds against Kubernetes' OpenAPI schemas in
strict mode (`kubernetes-validate`, which bundles them: an unknown or mistyped field fails), KEDA's kinds against
the `openAPIV3Schema` of KEDA's CRDs vendored in `deploy/schemas/keda/`.

A CRD schema leaves objects open (the API server prunes unknown fields, or refuses them under strict field
validation, which `kubectl apply` uses by default); to catch a mistyped field the way a strict apply would, every
object schema that lists `properties` is closed here unless it says `x-kubernetes-preserve-unknown-fields`. The
metadata of a KEDA object is checked as Kubernetes' ObjectMeta through kubernetes-validate's public `validate`,
wrapped in a ConfigMap. CEL rules (`x-kubernetes-validations`) can't be evaluated offline: the one KEDA's CRDs
carry is written out by hand below, and a CRD with any other rule fails, so a KEDA upgrade that adds one is
noticed rather than skipped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

from deploy.checks import which

#: Kubernetes versions the objects must be valid for: the oldest one this deploy supports, and the newest whose
#: schemas the pinned kubernetes-validate bundles.
DEFAULT_KUBERNETES_VERSIONS = ("1.30", latest_version())

#: The CEL rules of the vendored KEDA CRDs that `_cel_problems` evaluates by hand.
KNOWN_CEL_RULES = frozenset(
    {"!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)"}
)

Object = dict[str, Any]


def render(overlay: Path) -> list[Object]:
    """The objects `kubectl kustomize <overlay>` (or `kustomize build`) renders; raises CalledProcessError on error."""
    tool = which("kubectl", "kustomize")
    command = [tool, "kustomize", str(overlay)] if Path(tool).name == "kubectl" else [tool, "build", str(overlay)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: Object) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top)"


def kubernetes_problems(objects: Iterable[Object], versions: Iterable[str] = DEFAULT_KUBERNETES_VERSIONS) -> list[str]:
    """Built-in objects that don't validate in strict mode against every one of `versions`."""
    problems = []
    for obj in objects:
        if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name_of(obj)}: {_path(exc)}: {exc.message} (Kubernetes {version}, strict)")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name_of(obj)}: {exc.message}")
    return problems


def _closed(schema: Any) -> Any:
    """A copy of a CRD schema with every object that lists `properties` refusing other properties."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _cel_rules(schema: Any) -> Iterable[str]:
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            yield " ".join(str(rule["rule"]).split())
        for value in schema.values():
            yield from _cel_rules(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _cel_rules(item)


def load_crds(directory: Path) -> dict[tuple[str, str], Any]:
    """{(apiVersion, kind): closed openAPIV3Schema} of every served version of the CRDs in `directory`."""
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served"):
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return schemas


def _cel_problems(obj: Object) -> list[str]:
    """The CEL rules in KNOWN_CEL_RULES, evaluated on `obj`."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "ScaledObject" and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        return [f"{name_of(obj)}: minReplicaCount must be less than or equal to maxReplicaCount"]
    return []


def crd_problems(
    objects: Iterable[Object], crd_dir: Path, kubernetes_version: str = DEFAULT_KUBERNETES_VERSIONS[-1]
) -> list[str]:
    """KEDA objects that don't validate against the vendored CRDs (closed), their metadata, or their CEL rule."""
    schemas = load_crds(crd_dir)
    problems = [
        f"{crd_dir}: CEL rule not evaluated offline, add it to deploy/checks/manifests.py: {rule}"
        for schema in schemas.values()
        for rule in _cel_rules(schema)
        if rule not in KNOWN_CEL_RULES
    ]
    for obj in objects:
        if not str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            continue
        schema = schemas.get((obj["apiVersion"], obj.get("kind", "")))
        if schema is None:
            problems.append(f"{name_of(obj)}: no vendored CRD for {obj['apiVersion']} {obj.get('kind')} in {crd_dir}")
            continue
        validator = jsonschema.Draft202012Validator(_closed(schema))
        body = {key: value for key, value in obj.items() if key != "metadata"}
        for error in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
            problems.append(f"{name_of(obj)}: {_path(error)}: {error.message} (KEDA CRD, closed)")
        wrapped = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
        try:
            kubernetes_validate.validate(wrapped, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name_of(obj)}: {_path(exc)}: {exc.message} (ObjectMeta, strict)")
        problems.extend(_cel_problems(obj))
    return problems
