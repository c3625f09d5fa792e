"""pytest wiring of the end-to-end tier: one real control plane per session.

The session fixture ``cluster`` runs e2e/cluster/up (which builds missing binaries,
then starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, the
e2e kubelet, an S3 server and PostgreSQL on 127.0.0.1) or reuses a cluster that is
already up, and stops it at the end only if it started it (CONTEXTLM_E2E_KEEP=1
keeps it for the next run). Nothing is skipped: a part that cannot be built or
started fails the session with the command that provides it.

Fixtures: ``cluster`` (admin kubectl/apply/get, env of S3 and Postgres),
``operator_kubeconfig`` (the Helm chart's ServiceAccount, never admin), ``crds``
(crds/ applied and Established), ``namespace`` (a fresh namespace per test), and
``operator`` (a factory that runs the operator as a local process, stopped after the
test).
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.cluster import (
    REPO,
    Cluster,
    OperatorProcess,
    free_port,
    operator_command,
    run_operator,
    start_cluster,
    stop_cluster,
    wait_for,
)
from harness.s3 import S3


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    handle = start_cluster()
    try:
        yield handle
    finally:
        if handle.started_here and os.environ.get("CONTEXTLM_E2E_KEEP") != "1":
            stop_cluster()


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster) -> Path:
    return cluster.install_operator_rbac()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> list[str]:
    """Apply crds/ as a user would and wait until every CRD is Established."""
    files = sorted((REPO / "crds").glob("*.yaml"))
    if not files:
        raise AssertionError(f"no CRDs in {REPO / 'crds'}: generate them with `contextlm crds`")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=e2e-user",
                    "-f", str(REPO / "crds"))
    names = [cluster.get("-f", str(f))["metadata"]["name"] for f in files]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"crd/{n}" for n in names])
    return names


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:5]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: cluster.exists("serviceaccount", "default", "-n", name), timeout=60,
             message=f"default ServiceAccount in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    # The test's operators are stopped by now, and kopf's finalizers would keep the
    # namespace Terminating for good in a reused cluster: release what is left.
    left = cluster.kubectl("get", "contextlm", "-n", name, "-o", "name", check=False).stdout
    for obj in left.split():
        cluster.kubectl("patch", obj, "-n", name, "--type", "merge",
                        "-p", '{"metadata":{"finalizers":[]}}', check=False)


@pytest.fixture
def operator(cluster: Cluster, operator_kubeconfig: Path, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory: ``operator(*kopf_args, module=..., namespaces=[...], env={...})`` starts
    the operator under the chart's ServiceAccount; all are stopped after the test."""
    with ExitStack() as stack:
        def start(*args: str, **kwargs: Any) -> OperatorProcess:
            kwargs.setdefault("log_dir", tmp_path)
            return stack.enter_context(run_operator(cluster, *args, **kwargs))

        yield start


DOCS = {
    "handbook/returns.md": "# Returns\n\nCustomers may return a device within 30 days of delivery"
    " for a full refund. The device must be in its original packaging.\n",
    "handbook/warranty.md": "# Warranty\n\nEvery device carries a two-year limited warranty"
    " covering manufacturing defects. Water damage is not covered.\n",
    "handbook/support.txt": "Phone support is available on Business and Enterprise plans,"
    " Monday to Friday.\n",
}


@pytest.fixture
def s3(cluster: Cluster) -> S3:
    return S3(
        cluster.env["CONTEXTLM_E2E_S3_ENDPOINT"],
        cluster.env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        cluster.env["CONTEXTLM_E2E_S3_SECRET_KEY"],
        cluster.env["CONTEXTLM_E2E_S3_REGION"],
    )


@pytest.fixture
def system(
    cluster: Cluster,
    crds: list[str],
    namespace: str,
    s3: S3,
    operator: Callable[..., OperatorProcess],
) -> Iterator[dict[str, Any]]:
    """A namespace with the store Secret, a source bucket with documents, and the
    operator watching it with an S3 artifact store."""
    artifacts = f"artifacts-{uuid.uuid4().hex[:8]}"
    source = f"docs-{uuid.uuid4().hex[:8]}"
    s3.make_bucket(artifacts)
    s3.make_bucket(source)
    for key, text in DOCS.items():
        s3.put(source, key, text.encode())
    creds = {
        "accessKey": cluster.env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        "secretKey": cluster.env["CONTEXTLM_E2E_S3_SECRET_KEY"],
    }
    for name in ("contextlm-store", "docs-s3"):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": creds,
            }
        )
    port = free_port()
    env = {
        "CONTEXTLM_STORE_KIND": "s3",
        "CONTEXTLM_STORE_ENDPOINT": cluster.env["CONTEXTLM_E2E_S3_ENDPOINT"],
        "CONTEXTLM_STORE_BUCKET": artifacts,
        "CONTEXTLM_S3_ACCESS_KEY": creds["accessKey"],
        "CONTEXTLM_S3_SECRET_KEY": creds["secretKey"],
        "CONTEXTLM_RECONCILE_INTERVAL": "3",
        "CONTEXTLM_COMMAND": json.dumps(["contextlm"]),
        "CONTEXTLM_IMAGE": "registry.invalid/contextlm/e2e:none",
    }
    op = operator(
        command=operator_command(namespace, port),
        env=env,
    )
    yield {
        "namespace": namespace,
        "artifacts": artifacts,
        "source": source,
        "operator": op,
        "metrics": f"http://127.0.0.1:{port}/metrics",
    }
    op.assert_alive()
    # Delete the resources while the operator still runs (as the README's uninstall
    # order says): kopf's timers put a finalizer on each, and without an operator the
    # namespace would stay Terminating in a kept cluster.
    cluster.kubectl("delete", "contextlm", "--all", "-n", namespace, "--wait=true",
                    "--timeout=90s", check=False, timeout=120)
