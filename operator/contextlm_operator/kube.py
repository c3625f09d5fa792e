"""The only module that talks to the Kubernetes API.

Children are written with server-side apply under one field manager with force, sending
only the fields the operator owns, and only when the live object does not already hold
them: an apply that changes nothing is still a write request, and the reconcile timer
would send one per child per period. Status is merge-patched on the status subresource,
and only when it changed, so an idle operator writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from contextlm.api import GROUP, KINDS, VERSION

from .render.common import MANAGER

log = logging.getLogger(__name__)

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("batch/v1", "CronJob"): "cronjobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    **{(f"{GROUP}/{VERSION}", k.name): k.plural for k in KINDS},
}

_lock = threading.Lock()
_client: k8s.ApiClient | None = None


class NotFound(LookupError):
    pass


def api() -> k8s.ApiClient:
    global _client
    with _lock:
        if _client is None:
            try:
                k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
            _client = k8s.ApiClient()
        return _client


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


def _call(
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Any:
    client = api()
    if body is not None and "json" not in content_type:
        body = json.dumps(body)  # apply-patch+yaml: JSON is YAML, sent as text
    request = client.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(*request, _request_timeout=30)
    data = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(
            http_resp=response, body=data.decode(errors="replace") if data else None, data=None
        )
    return json.loads(data) if data else None


APPLIED = "contextlm.io/applied"
"""Annotation on every applied child: a digest of the manifest last applied."""


def manifest_digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def with_digest(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    annotations = {**meta.get("annotations", {}), APPLIED: manifest_digest(obj)}
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def holds(live: Any, want: Any) -> bool:
    """Does `live` carry every field of `want` with its value? The server adds defaults
    and other managers' fields, which do not count; an empty value in `want` claims
    nothing the server would keep."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            _empty(value) or (key in live and holds(live[key], value))
            for key, value in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(holds(a, b) for a, b in zip(live, want, strict=True))
        )
    return bool(live == want)


def unchanged(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """True when applying `desired` (with its digest) would change nothing we own. The
    digest catches fields dropped from the manifest since the last apply (the server
    would remove them); the comparison catches drift (someone changed or removed a
    field we set), which is then repaired by applying."""
    if live is None:
        return False
    digest = desired["metadata"]["annotations"][APPLIED]
    return bool(
        live["metadata"].get("annotations", {}).get(APPLIED) == digest and holds(live, desired)
    )


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `obj` (with force) unless the live object already holds it;
    return what the server holds."""
    desired = with_digest(obj)
    meta = desired["metadata"]
    live = get(desired["apiVersion"], desired["kind"], meta.get("namespace") or "", meta["name"])
    if live is not None and unchanged(live, desired):
        return live
    path = _path(desired["apiVersion"], desired["kind"], meta.get("namespace"), meta["name"])
    result: dict[str, Any] = _call(
        "PATCH",
        path,
        query=[("fieldManager", MANAGER), ("force", "true")],
        body=desired,
        content_type="application/apply-patch+yaml",
    )
    return result


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = _call("GET", _path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return result


def list_objects(
    api_version: str, kind: str, namespace: str, label_selector: dict[str, str]
) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
    result = _call("GET", _path(api_version, kind, namespace), query=[("labelSelector", selector)])
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def delete(api_version: str, kind: str, namespace: str, name: str) -> None:
    """Delete if present: a DELETE that finds nothing is still a write request, and
    reconcilers delete optional children on every pass."""
    if get(api_version, kind, namespace, name) is None:
        return
    try:
        _call(
            "DELETE",
            _path(api_version, kind, namespace, name),
            body={"propagationPolicy": "Background"},
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


def patch_status(body: dict[str, Any], status: dict[str, Any]) -> None:
    """Merge-patch the status subresource of a contextlm resource."""
    meta = body["metadata"]
    path = _path(body["apiVersion"], body["kind"], meta["namespace"], meta["name"]) + "/status"
    _call("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")


def secret_exists(namespace: str, name: str) -> bool:
    return get("v1", "Secret", namespace, name) is not None


def event(body: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
    """Record a Kubernetes Event on a resource (best effort: never fails a reconcile)."""
    from contextlm.api.conditions import now

    meta = body["metadata"]
    stamp = now()
    ev = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        _call("POST", _path("v1", "Event", meta["namespace"]), body=ev)
    except ApiException as exc:
        log.warning("could not record event %s on %s: %s", reason, meta["name"], exc.reason)
