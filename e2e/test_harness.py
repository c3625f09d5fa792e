"""The harness itself, proven against the real control plane: CRDs are accepted and
bad input refused by the API server, GPU scheduling behaves like a GPU cluster, Jobs
on the executor node really run, and the garbage collector cascades deletions."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cluster import (
    EXECUTOR_NODE_SELECTOR,
    EXECUTOR_TOLERATIONS,
    GPU_TOLERATIONS,
    OPERATOR_NAMESPACE,
    REPO,
    Cluster,
    wait_for,
)
from harness.s3 import S3

BAD_RESOURCES = REPO / "tests" / "data" / "bad_resources.yaml"
PLACEHOLDER_IMAGE = "registry.invalid/contextlm/e2e:none"  # never pulled: kwok and the e2e kubelet ignore it


def _bad_cases() -> list[Any]:
    if not BAD_RESOURCES.exists():
        # Not a skip: the table is part of the foundation; its absence is a failure.
        return [pytest.param(None, id="bad_resources.yaml-missing")]
    cases = yaml.safe_load(BAD_RESOURCES.read_text())
    return [pytest.param(case, id=case["name"].replace(" ", "-")) for case in cases]


# ---------------------------------------------------------------------------- CRDs
def test_every_crd_becomes_established(cluster: Cluster, crds: list[str]) -> None:
    for name in crds:
        conditions = {c["type"]: c["status"] for c in cluster.get("crd", name)["status"]["conditions"]}
        assert conditions.get("Established") == "True", (name, conditions)
        assert conditions.get("NamesAccepted") == "True", (name, conditions)


@pytest.mark.parametrize("case", _bad_cases())
def test_bad_resource_is_refused_naming_the_field(cluster: Cluster, crds: list[str], case: Any) -> None:
    assert case is not None, f"{BAD_RESOURCES} is missing"
    resource = dict(case["resource"])
    resource.setdefault("metadata", {}).setdefault("namespace", "default")
    result = cluster.kubectl("apply", "--dry-run=server", "--server-side", "--field-manager=e2e-user",
                             "-f", "-", input=yaml.safe_dump(resource), check=False)
    assert result.returncode != 0, f"API server accepted {case['name']!r}:\n{result.stdout}"
    assert case["field"] in result.stderr, (
        f"refusal of {case['name']!r} does not name {case['field']!r}:\n{result.stderr}")


# ---------------------------------------------------------------------------- RBAC
def test_operator_identity_is_the_chart_service_account_not_admin(
        cluster: Cluster, operator_kubeconfig: Path, crds: list[str]) -> None:
    who = cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=operator_kubeconfig).stdout
    username = json.loads(who)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{OPERATOR_NAMESPACE}:{cluster.operator_service_account}"
    assert cluster.can_i("create", "jobs.batch", "-n", "default", kubeconfig=operator_kubeconfig)
    for crd in crds:  # plural.group
        for verb in ("watch", "patch"):
            assert cluster.can_i(verb, crd, "-n", "default", kubeconfig=operator_kubeconfig), (verb, crd)
        assert cluster.can_i("patch", crd, "-n", "default", "--subresource=status",
                             kubeconfig=operator_kubeconfig), crd
    assert not cluster.can_i("create", "clusterroles", kubeconfig=operator_kubeconfig)
    assert not cluster.can_i("delete", "nodes", kubeconfig=operator_kubeconfig)
    assert not cluster.can_i("*", "*", kubeconfig=operator_kubeconfig)


def test_run_operator_helper_runs_kopf_under_the_chart_service_account(
        cluster: Cluster, namespace: str, operator: Any) -> None:
    probe = operator(module="harness.probe_operator", namespaces=[namespace],
                     env={"PYTHONPATH": str(Path(__file__).parent)})
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "probe", "labels": {"contextlm.io/e2e-probe": "yes"}}}, "-n", namespace)
    annotations = wait_for(
        lambda: cluster.get("configmap", "probe", "-n", namespace)["metadata"].get("annotations", {})
        .get("contextlm.io/e2e-probe-seen"),
        timeout=60, message=lambda: f"the probe operator to mark the ConfigMap; its log:\n{probe.log()[-3000:]}")
    assert annotations == "probe"
    probe.assert_alive()


# ---------------------------------------------------------------------------- GPU scheduling
def _gpu_deployment(name: str, gpus: int, resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": GPU_TOLERATIONS,
                    "containers": [{
                        "name": "server", "image": PLACEHOLDER_IMAGE,
                        "resources": {"limits": {resource: str(gpus)}},
                    }],
                },
            },
        },
    }


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    return items


def test_gpu_deployment_lands_on_a_gpu_node_and_becomes_ready(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_gpu_deployment("one-gpu", 1), "-n", namespace)
    cluster.kubectl("rollout", "status", "deployment/one-gpu", "-n", namespace, "--timeout=90s")
    (pod,) = _pods(cluster, namespace, "app=one-gpu")
    node = cluster.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True", pod["status"]


def test_mig_slice_lands_on_the_mig_node(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_gpu_deployment("mig-slice", 1, resource="nvidia.com/mig-1g.10gb"), "-n", namespace)
    cluster.kubectl("rollout", "status", "deployment/mig-slice", "-n", namespace, "--timeout=90s")
    (pod,) = _pods(cluster, namespace, "app=mig-slice")
    assert pod["spec"]["nodeName"] == "kwok-mig-0"


def test_too_many_gpus_stays_pending_with_the_scheduler_reason(cluster: Cluster, namespace: str) -> None:
    cluster.apply(_gpu_deployment("sixty-four", 64), "-n", namespace)

    def unschedulable() -> str | None:
        for pod in _pods(cluster, namespace, "app=sixty-four"):
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    assert pod["status"]["phase"] == "Pending"
                    return str(cond.get("message", ""))
        return None

    message = wait_for(unschedulable, timeout=60, message="PodScheduled=False on the 64-GPU pod")
    assert "Insufficient nvidia.com/gpu" in message, message


# ---------------------------------------------------------------------------- jobs that run
def _executor_job(name: str, command: list[str], **pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": EXECUTOR_NODE_SELECTOR,
                    "tolerations": EXECUTOR_TOLERATIONS,
                    "containers": [{"name": "main", "image": PLACEHOLDER_IMAGE, "command": command,
                                    **pod_spec.pop("container", {})}],
                    **pod_spec,
                },
            },
        },
    }


def _job_condition(cluster: Cluster, namespace: str, name: str) -> str | None:
    for cond in cluster.get("job", name, "-n", namespace).get("status", {}).get("conditions", []):
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_job_on_the_executor_node_writes_to_s3(cluster: Cluster, namespace: str) -> None:
    env = cluster.env
    bucket, key = "e2e-harness", f"jobs/{uuid.uuid4().hex}.txt"
    cluster.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
         "stringData": {"accessKey": env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
                        "secretKey": env["CONTEXTLM_E2E_S3_SECRET_KEY"]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s3-settings"},
         "data": {"S3_ENDPOINT": env["CONTEXTLM_E2E_S3_ENDPOINT"], "S3_REGION": env["CONTEXTLM_E2E_S3_REGION"]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s3-client"},
         "data": {"s3.py": (Path(__file__).parent / "harness" / "s3.py").read_text()}},
    ], "-n", namespace)
    job = _executor_job(
        "write-object",
        ["python", "/opt/e2e/s3.py", "put", bucket, key, "$(POD_NAME) on $(NODE_NAME)"],
        container={
            "envFrom": [{"configMapRef": {"name": "s3-settings"}}],
            "env": [
                {"name": "S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "accessKey"}}},
                {"name": "S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "secretKey"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
            "volumeMounts": [{"name": "client", "mountPath": "/opt/e2e", "readOnly": True}],
        },
        volumes=[{"name": "client", "configMap": {"name": "s3-client"}}],
    )
    cluster.apply(job, "-n", namespace)
    outcome = wait_for(lambda: _job_condition(cluster, namespace, "write-object"), timeout=90,
                       message=lambda: "job write-object to finish:\n" + cluster.describe("pods", "-n", namespace))
    assert outcome == "Complete", cluster.describe("pods", "-n", namespace)
    (pod,) = _pods(cluster, namespace, "job-name=write-object")
    assert pod["spec"]["nodeName"] == cluster.env["CONTEXTLM_E2E_EXECUTOR_NODE"]
    assert pod["status"]["phase"] == "Succeeded"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["startedAt"]
    # The object is really in the S3 server, written by the process the Job ran.
    s3 = S3(env["CONTEXTLM_E2E_S3_ENDPOINT"], env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
            env["CONTEXTLM_E2E_S3_SECRET_KEY"], env["CONTEXTLM_E2E_S3_REGION"])
    expected = f"{pod['metadata']['name']} on {cluster.env['CONTEXTLM_E2E_EXECUTOR_NODE']}"
    assert s3.get(bucket, key).decode() == expected
    # kubectl logs reaches the e2e kubelet through the API server, as for a real node.
    logs = cluster.kubectl("logs", pod["metadata"]["name"], "-n", namespace).stdout
    assert f"wrote s3://{bucket}/{key}" in logs


def test_failing_command_fails_the_job_with_its_exit_code(cluster: Cluster, namespace: str) -> None:
    script = "import sys; print('preparing'); print('boom: no such corpus', file=sys.stderr); sys.exit(3)"
    cluster.apply(_executor_job("fails", [Path(sys.executable).name, "-c", script]), "-n", namespace)
    outcome = wait_for(lambda: _job_condition(cluster, namespace, "fails"), timeout=90,
                       message="job fails to finish")
    assert outcome == "Failed"
    (pod,) = _pods(cluster, namespace, "job-name=fails")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert "boom: no such corpus" in terminated["message"]
    job = cluster.get("job", "fails", "-n", namespace)
    assert job["status"].get("failed") == 1


def test_termination_message_path_is_reported(cluster: Cluster, namespace: str) -> None:
    script = ("import sys; open('/dev/termination-log', 'w').write('snapshot=abc123');"
              " print('noise')")
    cluster.apply(_executor_job("message", ["python", "-c", script]), "-n", namespace)
    wait_for(lambda: _job_condition(cluster, namespace, "message"), timeout=90, message="job message")
    (pod,) = _pods(cluster, namespace, "job-name=message")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert terminated["message"] == "snapshot=abc123"


# ---------------------------------------------------------------------------- garbage collection
def test_deleting_an_owner_cascades_to_its_children(cluster: Cluster, namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, "-n", namespace)
    owner = cluster.get("configmap", "owner", "-n", namespace)
    cluster.apply({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
    }, "-n", namespace)
    # A Deployment owns a ReplicaSet which owns pods: two levels of cascade.
    deployment = _gpu_deployment("cascade", 0)
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"] = {}
    cluster.apply(deployment, "-n", namespace)
    cluster.kubectl("rollout", "status", "deployment/cascade", "-n", namespace, "--timeout=90s")
    assert _pods(cluster, namespace, "app=cascade")

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    cluster.kubectl("delete", "deployment", "cascade", "-n", namespace, "--cascade=background")
    wait_for(lambda: not cluster.exists("configmap", "child", "-n", namespace), timeout=60,
             message="child ConfigMap garbage-collected")
    wait_for(lambda: not cluster.get("replicasets", "-n", namespace, "-l", "app=cascade")["items"],
             timeout=60, message="ReplicaSet garbage-collected")
    wait_for(lambda: not _pods(cluster, namespace, "app=cascade"), timeout=90,
             message="pods garbage-collected")
