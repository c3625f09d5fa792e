"""What a pod's containers are given, resolved the way a kubelet resolves it: volumes
written to disk (emptyDir, configMap, secret, downwardAPI, projected incl. service
account tokens, PVC, hostPath) and the environment (values with $(VAR) expansion,
ConfigMap/Secret keys, envFrom, fieldRef, resourceFieldRef)."""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined references are replaced, $$ escapes a $,
    and an undefined reference is left as written."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, value)


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}


def quantity(value: str) -> float:
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"unsupported quantity {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


class ConfigError(Exception):
    """A referenced ConfigMap/Secret/key is missing: CreateContainerConfigError."""



class PodInputs:
    """Resolves what a pod's containers are given: volumes (files on disk) and environment
    (values, ConfigMaps, Secrets, downward API), reading referenced objects with the
    node's own credentials."""

    def __init__(self, *, api: client.CoreV1Api, pod: dict[str, Any], pod_dir: Path, pvc_root: Path,
                 apiserver: str) -> None:
        self.api = api
        self.pod = pod
        self.dir = pod_dir
        self.pvc_root = pvc_root
        self.apiserver = apiserver

    def prepare_volumes(self) -> dict[str, Path]:
        ns = self.pod["metadata"]["namespace"]
        paths: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes", []) or []:
            name = volume["name"]
            target = self.dir / "volumes" / name
            if "hostPath" in volume:
                paths[name] = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
                    paths[name].mkdir(parents=True, exist_ok=True)
                continue
            if "persistentVolumeClaim" in volume:
                # One directory per claim, kept across pods like a real volume.
                claim = volume["persistentVolumeClaim"]["claimName"]
                paths[name] = self.pvc_root / ns / claim
                paths[name].mkdir(parents=True, exist_ok=True)
                continue
            target.mkdir(parents=True, exist_ok=True)
            paths[name] = target
            if "configMap" in volume:
                self.write_items(target, self.config_map_data(volume["configMap"]), volume["configMap"].get("items"))
            elif "secret" in volume:
                source = dict(volume["secret"], name=volume["secret"].get("secretName"))
                self.write_items(target, self.secret_data(source), volume["secret"].get("items"))
            elif "downwardAPI" in volume:
                self.write_downward(target, volume["downwardAPI"].get("items", []))
            elif "projected" in volume:
                for source in volume["projected"].get("sources", []):
                    if "configMap" in source:
                        self.write_items(target, self.config_map_data(source["configMap"]), source["configMap"].get("items"))
                    elif "secret" in source:
                        self.write_items(target, self.secret_data(source["secret"]), source["secret"].get("items"))
                    elif "downwardAPI" in source:
                        self.write_downward(target, source["downwardAPI"].get("items", []))
                    elif "serviceAccountToken" in source:
                        self.write_token(target, source["serviceAccountToken"])
            # emptyDir and anything unknown: an empty directory
        return paths

    def config_map_data(self, ref: dict[str, Any]) -> dict[str, bytes] | None:
        ns = self.pod["metadata"]["namespace"]
        try:
            cm = self.get_with_retry(self.api.read_namespaced_config_map, ref["name"], ns)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return None
            raise ConfigError(f'configmap "{ref["name"]}" not found') from exc
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def secret_data(self, ref: dict[str, Any]) -> dict[str, bytes] | None:
        ns = self.pod["metadata"]["namespace"]
        try:
            secret = self.get_with_retry(self.api.read_namespaced_secret, ref["name"], ns)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return None
            raise ConfigError(f'secret "{ref["name"]}" not found') from exc
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    @staticmethod
    def get_with_retry(fn: Any, name: str, ns: str) -> Any:
        # The Node authorizer learns of a pod's references asynchronously: a 403 right
        # after binding means "not yet", so retry briefly before reporting it.
        for attempt in range(20):
            try:
                return fn(name, ns)
            except ApiException as exc:
                if exc.status != 403 or attempt == 19:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    @staticmethod
    def write_items(target: Path, data: dict[str, bytes] | None, items: list[dict[str, Any]] | None) -> None:
        if data is None:
            return
        selected = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in selected:
            if key not in data:
                raise ConfigError(f'key "{key}" not found')
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[key])

    def write_downward(self, target: Path, items: list[dict[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                value = self.field_ref(item["fieldRef"]["fieldPath"])
            else:
                value = self.resource_field_ref(None, item["resourceFieldRef"])
            (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (target / item["path"]).write_text(value)

    def write_token(self, target: Path, source: dict[str, Any]) -> None:
        meta = self.pod["metadata"]
        request = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"]] if source.get("audience") else None,
                "expirationSeconds": max(source.get("expirationSeconds", 3600), 3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        sa = self.pod["spec"].get("serviceAccountName", "default")
        token = self.api.create_namespaced_service_account_token(
            sa, meta["namespace"], request)  # type: ignore[arg-type]  # the client takes dicts too
        (target / source.get("path", "token")).write_text(str(token.status.token))  # type: ignore[union-attr]

    def field_ref(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        simple = {
            "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        raise ConfigError(f"unsupported fieldRef {path}")

    def resource_field_ref(self, container: dict[str, Any] | None, ref: dict[str, Any]) -> str:
        if container is None:
            name = ref.get("containerName")
            container = next(c for c in self.pod["spec"]["containers"] if c["name"] == name)
        kind, _, resource = ref["resource"].partition(".")
        resources = container.get("resources") or {}
        value = (resources.get(kind) or {}).get(resource) or (resources.get("limits") or {}).get(resource)
        if value is None:
            value = {"cpu": "64", "memory": "256Gi", "ephemeral-storage": "500Gi"}.get(resource, "0")
        divisor = quantity(ref.get("divisor", "1") or "1")
        result = quantity(value) / divisor
        return str(int(-(-result // 1)))  # ceiling, as the kubelet rounds up

    def container_env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        apiserver = urllib.parse.urlparse(self.apiserver)
        # A real kubelet points pods at the kubernetes Service; there is no service
        # proxy here, so point them at the API server's loopback address directly.
        env["KUBERNETES_SERVICE_HOST"] = apiserver.hostname or "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(apiserver.port or 443)
        env["KUBERNETES_SERVICE_PORT_HTTPS"] = env["KUBERNETES_SERVICE_PORT"]
        for source in container.get("envFrom", []) or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                found = self.config_map_data(source["configMapRef"])
            else:
                found = self.secret_data(source["secretRef"])
            env.update({prefix + k: v.decode() for k, v in (found or {}).items()})
        for item in container.get("env", []) or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(item.get("value", ""), env)
                continue
            source = item["valueFrom"]
            value: bytes | str | None
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = self.config_map_data(ref)
                value = None if data is None else data.get(ref["key"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self.secret_data(ref)
                value = None if data is None else data.get(ref["key"])
            elif "fieldRef" in source:
                ref, value = {}, self.field_ref(source["fieldRef"]["fieldPath"]).encode()
            elif "resourceFieldRef" in source:
                ref, value = {}, self.resource_field_ref(container, source["resourceFieldRef"]).encode()
            else:
                raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
            if value is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'couldn\'t find key {ref.get("key")} in {ref.get("name")} for env {name}')
            env[name] = value.decode() if isinstance(value, bytes) else value
        return env
