"""The floor for `bench/operator_scale.py`: a kopf operator that watches the same four
kinds and, for each resource, creates one ConfigMap (owned by it) and writes nothing
else: no status, no finalizer, no progress annotations (`on.event` keeps no state).

It shares what makes kopf cost what it costs with the contextlm operator: the same
watch settings, the same worker pool and the same Kubernetes client library for its one
write, so the gap between the two is the contextlm operator's own work.

    python -m kopf run bench/minimal_operator.py --standalone -n NAMESPACE
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "contextlm.io", "v1alpha1"
PLURALS = ("corpora", "retrievalstacks", "alignedmodels", "contextualdeployments")

_created: set[str] = set()
_lock = threading.Lock()
_core: k8s.CoreV1Api | None = None


def core() -> k8s.CoreV1Api:
    global _core
    with _lock:
        if _core is None:
            k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
            _core = k8s.CoreV1Api()
        return _core


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The contextlm operator's settings (operator/contextlm_operator/main.py).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 600
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True


def ensure_config_map(body: kopf.Body, type: str | None, **_: Any) -> None:
    meta = body["metadata"]
    if type == "DELETED" or meta.get("deletionTimestamp") or meta["uid"] in _created:
        return
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{meta['name']}-floor", "namespace": meta["namespace"]},
        "data": {"kind": str(body["kind"])},
    }
    kopf.adopt(config_map, owner=body)
    try:
        core().create_namespaced_config_map(meta["namespace"], config_map)  # type: ignore[arg-type]
    except ApiException as exc:
        if exc.status != 409:  # already there (a restart lists everything again)
            raise
    _created.add(meta["uid"])


for _plural in PLURALS:
    kopf.on.event(GROUP, VERSION, _plural, id=f"floor-{_plural}")(ensure_config_map)
