"""The Helm chart on the real control plane: its rendered manifests pass a server-side
dry run and then apply for real, re-applying them changes nothing (what a GitOps sync
sees), its RBAC grants what it says and no more, and the operator it deploys runs on
the executor node under the chart's ServiceAccount, leader election on, and reconciles
a Corpus.

The prometheus-operator kinds (ServiceMonitor, PodMonitor, PrometheusRule) are rendered
and checked by tests/chart/ but not applied here: the harness has no
monitoring.coreos.com CRDs.
"""

from __future__ import annotations

import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cluster import (
    CHART,
    EXECUTOR_NODE_SELECTOR,
    EXECUTOR_TOLERATIONS,
    REPO,
    Cluster,
    free_port,
    wait_for,
)
from harness.s3 import S3

sys.path.append(str(REPO / "tests"))  # the promtool helper of tests/chart
from chart.prometheus_tools import check_metrics

FIELD_MANAGER = "helm-e2e"
PEERING_CRDS = CHART / "crds" / "kopf.dev_peerings.yaml"


@dataclass
class Release:
    """One install of the chart, named uniquely so tests never share objects."""

    cluster: Cluster
    name: str
    namespace: str
    directory: Path
    applied: list[Path] = field(default_factory=list)

    @property
    def fullname(self) -> str:
        return f"{self.name}-contextlm"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def render(self, values: dict[str, Any], tag: str) -> Path:
        values_path = self.directory / f"values-{tag}.yaml"
        values_path.write_text(yaml.safe_dump(values))
        text = self.cluster.helm(
            "template",
            self.name,
            str(CHART),
            "--namespace",
            self.namespace,
            "--values",
            str(values_path),
        )
        path = self.directory / f"manifests-{tag}.yaml"
        path.write_text(text)
        return path

    def kubectl_apply(self, path: Path, *extra: str) -> str:
        result = self.cluster.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", str(path), *extra
        )
        return result.stdout

    def apply(self, path: Path) -> None:
        self.applied.append(path)
        self.kubectl_apply(path)

    def can(self, verb: str, resource: str, *args: str) -> bool:
        return self.cluster.can_i(verb, resource, *args, f"--as={self.service_account}")


@pytest.fixture
def release(cluster: Cluster, crds: list[str], tmp_path: Path) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    handle = Release(cluster, f"e2e-{suffix}", f"chart-op-{suffix}", tmp_path)
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": handle.namespace}})
    # The chart's crds/ as `helm install` applies them: ours (crds fixture) and kopf's.
    cluster.kubectl("apply", "--server-side", "--field-manager=e2e-user", "-f", str(PEERING_CRDS))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kopfpeerings.kopf.dev",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    yield handle
    for path in reversed(handle.applied):
        cluster.kubectl(
            "delete", "-f", str(path), "--ignore-not-found", "--wait=false", check=False
        )
    cluster.kubectl("delete", "namespace", handle.namespace, "--wait=false", check=False)


def _resource_versions(cluster: Cluster, path: Path) -> dict[str, str]:
    items = cluster.get("-f", str(path))
    docs = items.get("items", [items])
    return {
        f"{d['kind']}/{d['metadata'].get('namespace', '')}/{d['metadata']['name']}": d["metadata"][
            "resourceVersion"
        ]
        for d in docs
    }


def test_chart_dry_run_then_apply_then_no_drift(
    cluster: Cluster, release: Release, namespace: str
) -> None:
    # Cluster-wide, two replicas: the server accepts every object (dry run only: the
    # ClusterKopfPeering is one per cluster and may belong to another install).
    cluster_wide = release.render({"replicaCount": 2}, "cluster-wide")
    out = release.kubectl_apply(cluster_wide, "--dry-run=server")
    assert "clusterrole.rbac.authorization.k8s.io/" in out and "(server dry run)" in out, out
    assert not cluster.exists("deployment", release.fullname, "-n", release.namespace)

    namespaced = release.render(
        {"watchNamespaces": [namespace], "replicaCount": 2, "store": {"kind": "local"}},
        "namespaced",
    )
    release.kubectl_apply(namespaced, "--dry-run=server")
    assert not cluster.exists("role", release.fullname, "-n", namespace)

    release.apply(namespaced)
    for kind, ns, name in (
        ("serviceaccount", release.namespace, release.fullname),
        ("deployment", release.namespace, release.fullname),
        ("service", release.namespace, f"{release.fullname}-metrics"),
        ("poddisruptionbudget", release.namespace, release.fullname),
        ("role", namespace, release.fullname),
        ("rolebinding", namespace, release.fullname),
        ("kopfpeering", namespace, "contextlm"),
    ):
        assert cluster.exists(kind, name, "-n", ns), f"{kind} {ns}/{name}"
    assert cluster.exists("clusterrole", f"{release.fullname}-discovery")

    # A GitOps sync of the same manifests finds nothing to change.
    before = _resource_versions(cluster, namespaced)
    diff = cluster.kubectl(
        "diff",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        "-f",
        str(namespaced),
        check=False,
    )
    assert diff.returncode == 0, f"kubectl diff after apply:\n{diff.stdout}\n{diff.stderr}"
    release.kubectl_apply(namespaced)
    assert _resource_versions(cluster, namespaced) == before


def test_namespaced_rbac_grants_what_the_operator_uses_and_no_more(
    cluster: Cluster, release: Release, namespace: str
) -> None:
    manifests = release.render({"watchNamespaces": [namespace]}, "rbac")
    release.apply(manifests)
    ns = ["-n", namespace]
    allowed = [
        ("patch", "deployments.apps", *ns),
        ("create", "jobs.batch", *ns),
        ("delete", "configmaps", *ns),
        ("list", "pods", *ns),
        ("get", "secrets", *ns),
        ("create", "events", *ns),
        ("patch", "corpora.contextlm.io", *ns, "--subresource=status"),
        ("watch", "retrievalstacks.contextlm.io", *ns),
        ("create", "alignmentruns.contextlm.io", *ns),
        ("patch", "kopfpeerings.kopf.dev/contextlm", *ns),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    denied = [
        ("list", "secrets", *ns),  # never more than the Secret a resource names
        ("watch", "secrets", *ns),
        ("update", "deployments.apps", *ns),  # apply, never update
        ("create", "pods", *ns),
        ("delete", "pods", *ns),
        ("create", "corpora.contextlm.io", *ns),  # users create resources, not the operator
        ("patch", "kopfpeerings.kopf.dev/other", *ns),
        ("patch", "deployments.apps", "-n", "default"),  # outside watchNamespaces
        ("get", "secrets", "-n", "default"),
        ("list", "namespaces"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
    ]
    wrong = [a for a in allowed if not release.can(*a)] + [d for d in denied if release.can(*d)]
    assert wrong == [], f"RBAC differs from the chart's intent for: {wrong}"


@pytest.fixture
def s3(cluster: Cluster) -> S3:
    env = cluster.env
    return S3(
        env["CONTEXTLM_E2E_S3_ENDPOINT"],
        env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        env["CONTEXTLM_E2E_S3_SECRET_KEY"],
        env["CONTEXTLM_E2E_S3_REGION"],
    )


def _debug(cluster: Cluster, release: Release, namespace: str) -> str:
    logs = cluster.kubectl(
        "logs",
        f"deployment/{release.fullname}",
        "-n",
        release.namespace,
        "--tail=80",
        check=False,
    )
    pods = cluster.kubectl("get", "pods", "-o", "wide", "-n", release.namespace, check=False)
    events = cluster.kubectl("get", "events", "-n", namespace, check=False)
    return (
        f"pods:\n{pods.stdout}\noperator log:\n{logs.stdout}{logs.stderr}\nevents:\n{events.stdout}"
    )


def test_operator_from_the_chart_reconciles_under_its_own_account(
    cluster: Cluster, release: Release, namespace: str, s3: S3
) -> None:
    """The chart's Deployment runs `contextlm-operator` on the executor node as a real
    process: in-cluster config from the mounted ServiceAccount token, the chart's RBAC,
    kopf peering on the chart's KopfPeering, probes on the metrics port."""
    artifacts, source = f"artifacts-{uuid.uuid4().hex[:8]}", f"docs-{uuid.uuid4().hex[:8]}"
    s3.make_bucket(artifacts)
    s3.make_bucket(source)
    s3.put(source, "handbook/returns.md", b"# Returns\n\nDevices may be returned within 30 days.\n")
    creds = {
        "accessKey": cluster.env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        "secretKey": cluster.env["CONTEXTLM_E2E_S3_SECRET_KEY"],
    }
    for ns, name in (
        (release.namespace, "contextlm-store"),
        (namespace, "contextlm-store"),
        (namespace, "docs-s3"),
    ):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": ns},
                "stringData": creds,
            }
        )
    port = free_port()  # pods share the host's loopback: one port per operator
    on_executor = {"nodeSelector": EXECUTOR_NODE_SELECTOR, "tolerations": EXECUTOR_TOLERATIONS}
    manifests = release.render(
        {
            "watchNamespaces": [namespace],
            "store": {
                "kind": "s3",
                "endpoint": cluster.env["CONTEXTLM_E2E_S3_ENDPOINT"],
                "bucket": artifacts,
                "region": cluster.env["CONTEXTLM_E2E_S3_REGION"],
            },
            "metrics": {"port": port},
            "reconcileInterval": 3,
            "jobs": on_executor,
            **on_executor,
        },
        "operator",
    )
    release.apply(manifests)
    rollout = cluster.kubectl(
        "rollout",
        "status",
        f"deployment/{release.fullname}",
        "-n",
        release.namespace,
        "--timeout=120s",
        check=False,
        timeout=150,
    )
    assert rollout.returncode == 0, f"{rollout.stderr}\n{_debug(cluster, release, namespace)}"

    # The real operator's scrape passes promtool.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        check_metrics(response.read().decode())

    cluster.apply(
        {
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
    )

    # Reconciled by the chart's operator under the chart's RBAC: status written through
    # the status subresource, children applied, pods listed, Events posted.
    def reconciled() -> dict[str, Any] | None:
        corpus: dict[str, Any] = cluster.get("corpus", "handbook", "-n", namespace)
        status = corpus.get("status") or {}
        done = status.get("observedGeneration") == corpus["metadata"]["generation"]
        return corpus if done and status.get("conditions") else None

    corpus = wait_for(reconciled, timeout=120, message=lambda: _debug(cluster, release, namespace))
    uid = corpus["metadata"]["uid"]
    jobs = cluster.get("jobs", "-n", namespace)["items"]
    owned = [j for j in jobs if any(r["uid"] == uid for r in j["metadata"]["ownerReferences"])]
    assert owned, f"no sync Job owned by the Corpus:\n{_debug(cluster, release, namespace)}"
    configmaps = cluster.get("configmaps", "-n", namespace)["items"]
    assert any(
        r["uid"] == uid for c in configmaps for r in c["metadata"].get("ownerReferences", [])
    ), "no ConfigMap owned by the Corpus"
    wait_for(
        lambda: any(
            e["involvedObject"].get("uid") == uid
            for e in cluster.get("events", "-n", namespace)["items"]
        ),
        timeout=120,
        message=lambda: f"an Event on the Corpus\n{_debug(cluster, release, namespace)}",
    )

    # The sync Job runs on the executor node against the real S3 server: the snapshot
    # is published and the Corpus turns Ready.
    ready = cluster.kubectl(
        "wait",
        "corpus/handbook",
        "-n",
        namespace,
        "--for=condition=Ready",
        "--timeout=300s",
        check=False,
        timeout=330,
    )
    status = cluster.get("corpus", "handbook", "-n", namespace).get("status") or {}
    assert ready.returncode == 0, (
        f"Corpus not Ready: {status}\n{_debug(cluster, release, namespace)}"
    )
    assert status["phase"] == "Ready" and status["documents"] == 1, status

    log = cluster.kubectl(
        "logs", f"deployment/{release.fullname}", "-n", release.namespace, check=False
    ).stdout
    # kopf lists namespaces only to resolve namespace patterns; without the grant it
    # retries, then uses watchNamespaces as given (docs/sre.md, "Permissions"). Any other
    # refusal is a permission the chart is missing.
    refused = [
        line
        for line in log.splitlines()
        if ("Forbidden" in line or " 403" in line) and "/api/v1/namespaces ->" not in line
    ]
    assert refused == [], "\n".join(refused[-20:])
    peering = cluster.get("kopfpeering", "contextlm", "-n", namespace)
    assert peering.get("status"), "the operator did not announce itself on the peering object"
