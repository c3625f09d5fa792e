"""Documents to hybrid retrieval on the real control plane, driven with kubectl apply.

The operator runs under the chart's ServiceAccount; its sync and index Jobs run on the
executor node (the e2e kubelet executes the real runtime code against the real S3
server); the retriever Deployment lands on kwok nodes.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from harness.cluster import Cluster, OperatorProcess, wait_for
from harness.s3 import S3


def _corpus(namespace: str, source: str) -> dict[str, Any]:
    return {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "Corpus",
        "metadata": {"name": "handbook", "namespace": namespace},
        "spec": {
            "source": {
                "s3": {
                    "bucket": source,
                    "prefix": "handbook/",
                    "secretRef": {"name": "docs-s3"},
                }
            },
            "extraction": {"chunking": {"size": 64, "overlap": 8}},
        },
    }


def _stack(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "RetrievalStack",
        "metadata": {"name": "handbook-search", "namespace": namespace},
        "spec": {
            "corpusRef": {"name": "handbook"},
            "retrievers": [
                {"name": "dense", "weight": 0.5, "dense": {"index": {"type": "flat"}}},
                {"name": "bm25", "weight": 0.5, "sparse": {}},
            ],
            "topK": 3,
        },
    }


def _status(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get(kind, name, "-n", namespace).get("status") or {}
    return status


def _wait_ready(
    cluster: Cluster, kind: str, name: str, namespace: str, op: OperatorProcess
) -> None:
    result = cluster.kubectl(
        "wait",
        f"{kind}/{name}",
        "-n",
        namespace,
        "--for=condition=Ready",
        "--timeout=420s",
        check=False,
        timeout=450,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{kind}/{name} not Ready: {json.dumps(_status(cluster, kind, name, namespace), indent=1)}\n"
            f"events:\n{cluster.kubectl('get', 'events', '-n', namespace, check=False).stdout}\n"
            f"operator log:\n{op.log()[-4000:]}"
        )


def _keys(s3: S3, bucket: str, prefix: str) -> list[str]:
    import re

    body = s3.request("GET", bucket, "").decode()  # ListObjects (v1), enough for a few keys
    keys = re.findall(r"<Key>([^<]+)</Key>", body)
    return [k for k in keys if k.startswith(prefix)]


def test_documents_to_a_served_index_and_a_rolled_update(
    cluster: Cluster, s3: S3, system: dict[str, Any]
) -> None:
    ns, op = system["namespace"], system["operator"]
    cluster.apply([_corpus(ns, system["source"]), _stack(ns)])

    _wait_ready(cluster, "corpus", "handbook", ns, op)
    corpus = _status(cluster, "corpus", "handbook", ns)
    assert corpus["documents"] == 3 and corpus["chunks"] >= 3, corpus
    assert corpus["phase"] == "Ready"

    _wait_ready(cluster, "retrievalstack", "handbook-search", ns, op)
    stack = _status(cluster, "retrievalstack", "handbook-search", ns)
    version = stack["servingIndexVersion"]
    assert version == stack["builtIndexVersion"]
    assert stack["snapshotId"] == corpus["snapshotId"]
    prefix = f"retrieval/{ns}/handbook-search/indexes/{version}/"
    keys = _keys(s3, system["artifacts"], prefix)
    assert prefix + "manifest.json" in keys, keys
    assert any("dense-dense" in k for k in keys) and any("sparse-bm25" in k for k in keys), keys

    deployment = cluster.get("deployment", "handbook-search-retriever", "-n", ns)
    assert deployment["metadata"]["annotations"]["contextlm.io/index-version"] == version
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "RetrievalStack"
    assert cluster.exists("service", "handbook-search-retriever", "-n", ns)

    # One document changes; a re-sync publishes a new snapshot and index, and the
    # retriever is rolled to it.
    s3.put(
        system["source"],
        "handbook/returns.md",
        b"# Returns\n\nCustomers may return a device within 60 days of delivery.\n",
    )
    cluster.kubectl("annotate", "corpus/handbook", "-n", ns, f"contextlm.io/resync={time.time()}")
    wait_for(
        lambda: (
            _status(cluster, "corpus", "handbook", ns).get("snapshotId")
            not in (None, corpus["snapshotId"])
        ),
        timeout=300,
        message=lambda: f"a new snapshot; operator log:\n{op.log()[-3000:]}",
    )
    new_version = wait_for(
        lambda: (
            (
                v := _status(cluster, "retrievalstack", "handbook-search", ns).get(
                    "servingIndexVersion"
                )
            )
            not in (None, version)
            and v
        ),
        timeout=420,
        message=lambda: f"a new serving index; operator log:\n{op.log()[-3000:]}",
    )
    rolled = cluster.get("deployment", "handbook-search-retriever", "-n", ns)
    assert (
        rolled["spec"]["template"]["metadata"]["annotations"]["contextlm.io/index-version"]
        == new_version
    )
    assert _status(cluster, "retrievalstack", "handbook-search", ns)["chunksIndexed"] >= 3

    # Drift is repaired: a deleted child comes back within a timer period.
    cluster.kubectl("delete", "service", "handbook-search-retriever", "-n", ns)
    wait_for(
        lambda: cluster.exists("service", "handbook-search-retriever", "-n", ns),
        timeout=60,
        message="the deleted Service to be restored",
    )

    # Deleting the stack removes its children (ownerReferences + garbage collector).
    cluster.kubectl("delete", "retrievalstack", "handbook-search", "-n", ns)
    wait_for(
        lambda: not cluster.exists("deployment", "handbook-search-retriever", "-n", ns),
        timeout=120,
        message="the retriever Deployment to be garbage-collected",
    )
    wait_for(
        lambda: not cluster.exists("service", "handbook-search-retriever", "-n", ns),
        timeout=120,
        message="the retriever Service to be garbage-collected",
    )


def test_bad_references_become_conditions_and_events(
    cluster: Cluster, system: dict[str, Any]
) -> None:
    ns, op = system["namespace"], system["operator"]
    stack = _stack(ns)
    stack["spec"]["corpusRef"] = {"name": "does-not-exist"}
    corpus = _corpus(ns, system["source"])
    corpus["metadata"]["name"] = "locked"
    corpus["spec"]["source"]["s3"]["secretRef"] = {"name": "missing-secret"}
    cluster.apply([stack, corpus])

    def condition(kind: str, name: str, ctype: str) -> dict[str, Any] | None:
        for c in _status(cluster, kind, name, ns).get("conditions", []):
            if c["type"] == ctype and c["status"] == "False":
                return c
        return None

    deps = wait_for(
        lambda: condition("retrievalstack", "handbook-search", "DependenciesReady"),
        timeout=60,
        message=lambda: f"DependenciesReady=False; log:\n{op.log()[-2000:]}",
    )
    assert deps["reason"] == "CorpusNotFound" and "does-not-exist" in deps["message"]
    synced = wait_for(
        lambda: condition("corpus", "locked", "Synced"),
        timeout=60,
        message="Synced=False for the missing Secret",
    )
    assert synced["reason"] == "SecretNotFound" and "missing-secret" in synced["message"]
    events = wait_for(
        lambda: [
            e
            for e in cluster.get("events", "-n", ns)["items"]
            if e["reason"] in ("CorpusNotFound", "SecretNotFound")
        ],
        timeout=30,
        message="Warning events for the False conditions",
    )
    assert {e["type"] for e in events} == {"Warning"}
    assert not cluster.exists("jobs", "-n", ns, "-l", "app.kubernetes.io/instance=locked")
    # No crash loop: the operator is still up and still reconciling.
    time.sleep(5)
    op.assert_alive()
    assert "Traceback" not in op.log(), op.log()[-3000:]


def test_operator_metrics_count_reconciles(system: dict[str, Any], cluster: Cluster) -> None:
    import urllib.request

    ns = system["namespace"]
    cluster.apply(_stack(ns))
    text = wait_for(
        lambda: (
            (body := urllib.request.urlopen(system["metrics"], timeout=5).read().decode())
            and 'contextlm_operator_reconciles_total{kind="RetrievalStack"' in body
            and body
        ),
        timeout=60,
        message="reconcile metrics",
    )
    assert "contextlm_operator_reconcile_duration_seconds_bucket" in text
    # Cluster-wide: stacks of other tests' namespaces may be counted too.
    waiting = re.search(
        r'contextlm_operator_resources\{kind="RetrievalStack",phase="Waiting"\} ([0-9.]+)', text
    )
    assert waiting and float(waiting.group(1)) >= 1, text[-2000:]
