"""GitOps friendliness: the operator never writes `spec`, and a sync of the same
manifests changes nothing, so Argo CD or Flux would show every object in sync.

examples/production is applied as a GitOps tool would (server-side apply under its own
field manager, or client-side `kubectl apply`), reconciled by the operator until its
status settles, then diffed and applied again. The chart's own objects are checked in
test_chart.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cluster import REPO, Cluster, OperatorProcess, free_port, operator_command, wait_for

EXAMPLES = REPO / "examples" / "production"
CONTEXTLM = "contextlm.io/"
GITOPS_MANAGER = "gitops-sync"
# The field manager a user's apply leaves: the sync's own for server-side apply,
# kubectl's for client-side apply.
USER_MANAGERS = {"server-side": {GITOPS_MANAGER}, "client-side": {"kubectl-client-side-apply"}}
INTERVAL = 3  # reconcile timer, seconds: a few periods pass while the status settles


def _manifests(namespace: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["metadata"]["namespace"] = namespace
                docs.append(doc)
    return docs


def _apply_args(mode: str) -> list[str]:
    if mode == "server-side":
        return ["--server-side", f"--field-manager={GITOPS_MANAGER}"]
    return []


def _live(cluster: Cluster, path: Path) -> dict[str, dict[str, Any]]:
    items = cluster.get("-f", str(path), "--show-managed-fields")
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in items.get("items", [items])}


def _versions(cluster: Cluster, path: Path) -> dict[str, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in _live(cluster, path).items()}


def _status_written(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and status.get("conditions")
    )


def _settled(cluster: Cluster, path: Path, op: OperatorProcess) -> dict[str, str] | None:
    """Every contextlm object's status written and nothing changing for 3 timer periods."""
    op.assert_alive()
    live = _live(cluster, path)
    if not all(_status_written(o) for o in live.values() if o["apiVersion"].startswith(CONTEXTLM)):
        return None
    before = {key: obj["metadata"]["resourceVersion"] for key, obj in live.items()}
    time.sleep(3 * INTERVAL)
    return before if _versions(cluster, path) == before else None


def _spec_writers(obj: dict[str, Any]) -> set[str]:
    """Managers whose managedFields entry owns anything under spec."""
    return {
        entry["manager"]
        for entry in obj["metadata"].get("managedFields", [])
        if "f:spec" in (entry.get("fieldsV1") or {})
    }


@pytest.mark.parametrize("mode", ["server-side", "client-side"])
def test_operator_never_writes_spec_and_a_resync_changes_nothing(
    cluster: Cluster,
    crds: list[str],
    namespace: str,
    operator: Callable[..., OperatorProcess],
    tmp_path: Path,
    mode: str,
) -> None:
    path = tmp_path / "production.yaml"
    path.write_text(yaml.safe_dump_all(_manifests(namespace)))
    cluster.kubectl("apply", *_apply_args(mode), "-f", str(path))
    generations = {
        k: o["metadata"]["generation"]
        for k, o in _live(cluster, path).items()
        if o["apiVersion"].startswith(CONTEXTLM)
    }
    assert len(generations) == 4, generations  # Corpus, RetrievalStack, AlignedModel, Deployment

    port = free_port()
    op = operator(
        command=operator_command(namespace, port),
        env={
            "CONTEXTLM_RECONCILE_INTERVAL": str(INTERVAL),
            "CONTEXTLM_STORE_KIND": "local",
            "CONTEXTLM_IMAGE": "registry.invalid/contextlm/e2e:none",
            # The examples' Jobs would reach real S3 and PostgreSQL: keep them on kwok,
            # whose Job pods complete without running anything.
            "CONTEXTLM_JOB_NODE_SELECTOR": json.dumps({"type": "kwok"}),
            "CONTEXTLM_JOB_TOLERATIONS": json.dumps([]),
        },
    )
    versions = wait_for(
        lambda: _settled(cluster, path, op),
        timeout=240,
        interval=1,
        message=lambda: f"the examples' status to settle; operator log:\n{op.log()[-3000:]}",
    )

    # The operator wrote status (and children), never spec: spec has no owner but the
    # user's apply, and no generation moved.
    live = _live(cluster, path)
    for key, obj in live.items():
        if not obj["apiVersion"].startswith(CONTEXTLM):
            continue
        assert obj["metadata"]["generation"] == generations[key], key
        assert _spec_writers(obj) and _spec_writers(obj) <= USER_MANAGERS[mode], (
            f"{key}: spec owned by {_spec_writers(obj)}:\n"
            + json.dumps(obj["metadata"]["managedFields"], indent=1)
        )
        assert obj["status"]["conditions"], key

    # A GitOps sync of the same manifests: nothing to show, nothing written.
    diff = cluster.kubectl("diff", *_apply_args(mode), "-f", str(path), check=False)
    assert diff.returncode == 0, f"kubectl diff after reconcile:\n{diff.stdout}\n{diff.stderr}"
    cluster.kubectl("apply", *_apply_args(mode), "-f", str(path))
    assert _versions(cluster, path) == versions
    time.sleep(2 * INTERVAL)  # and the operator's timer, seeing no change, writes nothing
    assert _versions(cluster, path) == versions


def test_an_edited_child_is_put_back(
    cluster: Cluster,
    crds: list[str],
    namespace: str,
    operator: Callable[..., OperatorProcess],
) -> None:
    """The operator applies a child only when the live one differs from what it renders
    (so an idle operator writes nothing): an edit by someone else must still count as a
    difference and be undone on the next timer tick. (A deleted child coming back is
    checked in test_corpus_retrieval.py.)"""
    model = {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "AlignedModel",
        "metadata": {"name": "m", "namespace": namespace},
        "spec": {
            "base": {"model": "models/tiny", "revision": "base"},
            "serving": {"replicas": 1, "resources": {"requests": {"cpu": "10m"}}},
        },
    }
    cluster.kubectl("apply", *_apply_args("server-side"), "-f", "-", input=yaml.safe_dump(model))
    port = free_port()
    op = operator(
        command=operator_command(namespace, port),
        env={"CONTEXTLM_RECONCILE_INTERVAL": str(INTERVAL), "CONTEXTLM_STORE_KIND": "local"},
    )
    name = "m-generator"
    deployment = wait_for(
        lambda: (
            cluster.get("deployment", name, "-n", namespace)
            if cluster.exists("deployment", name, "-n", namespace)
            else None
        ),
        timeout=120,
        message=lambda: f"the generator Deployment; operator log:\n{op.log()[-3000:]}",
    )
    service = cluster.get("service", name, "-n", namespace)
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]

    # Someone edits a field the operator sets, and removes a label it sets.
    cluster.kubectl("set", "image", f"deployment/{name}", "*=edited.invalid/x:1", "-n", namespace)
    cluster.kubectl("label", f"service/{name}", "app.kubernetes.io/component-", "-n", namespace)

    def repaired() -> bool:
        live = cluster.get("deployment", name, "-n", namespace)
        svc = cluster.get("service", name, "-n", namespace)
        return bool(
            live["spec"]["template"]["spec"]["containers"][0]["image"] == image
            and svc["metadata"]["labels"] == service["metadata"]["labels"]
        )

    wait_for(repaired, timeout=60, message=lambda: f"the edits undone; log:\n{op.log()[-3000:]}")
    op.assert_alive()
