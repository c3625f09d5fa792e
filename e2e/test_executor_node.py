"""The executor node behaves like a kubelet where the operator's workloads depend on it:
readiness probes gate Ready, volumes appear at their mountPath, restartPolicy
OnFailure restarts in place, and deleting a pod kills its process."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

from harness.cluster import (
    EXECUTOR_NODE_SELECTOR,
    EXECUTOR_TOLERATIONS,
    Cluster,
    free_port,
    wait_for,
)

IMAGE = "registry.invalid/contextlm/e2e:none"
SLEEPER = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(600)"


def _on_executor(spec: dict[str, Any]) -> dict[str, Any]:
    return {"nodeSelector": EXECUTOR_NODE_SELECTOR, "tolerations": EXECUTOR_TOLERATIONS, **spec}


def _pod(cluster: Cluster, namespace: str, selector: str) -> dict[str, Any]:
    pods: list[dict[str, Any]] = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def test_readiness_probe_and_downward_api_volume(cluster: Cluster, namespace: str) -> None:
    port = free_port()
    cluster.apply({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"note": "hello from the pod"}},
                "spec": _on_executor({
                    "containers": [{
                        "name": "web", "image": IMAGE,
                        "command": ["python", "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                    "--directory", "/srv/info"],
                        "ports": [{"name": "http", "containerPort": port}],
                        "readinessProbe": {"httpGet": {"path": "/note", "port": "http"}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "info", "mountPath": "/srv/info"}],
                    }],
                    "volumes": [{"name": "info", "downwardAPI": {"items": [
                        {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['note']"}}]}}],
                }),
            },
        },
    }, "-n", namespace)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/note", timeout=5) as response:
        assert response.read().decode() == "hello from the pod"


def test_on_failure_restarts_in_place_keeping_the_empty_dir(cluster: Cluster, namespace: str) -> None:
    script = ('n=$(cat /state/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /state/n; '
              'echo attempt $n; [ "$n" -ge 2 ]')
    cluster.apply({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retry"},
        "spec": {"backoffLimit": 3, "template": {"spec": _on_executor({
            "restartPolicy": "OnFailure",
            "volumes": [{"name": "state", "emptyDir": {}}],
            "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "state", "mountPath": "/state"}]}],
        })}},
    }, "-n", namespace)
    cluster.kubectl("wait", "--for=condition=Complete", "job/retry", "-n", namespace, "--timeout=60s")
    pod = _pod(cluster, namespace, "job-name=retry")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert "attempt 2" in cluster.kubectl("logs", pod["metadata"]["name"], "-n", namespace).stdout


def test_deleting_a_pod_kills_its_process(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cluster.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "labels": {"app": "sleeper"}},
        "spec": _on_executor({
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": IMAGE,
                            "command": ["python", "-c", SLEEPER],
                            "workingDir": str(tmp_path)}],
        }),
    }, "-n", namespace)
    cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "-n", namespace, "--timeout=60s")
    pid_file = tmp_path / "pid"
    pid = int(wait_for(lambda: pid_file.read_text().strip(), timeout=30, message="the pod's pid file"))
    os.kill(pid, 0)  # running
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--timeout=60s")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A killed child not yet reaped is a zombie: it no longer runs.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(gone, timeout=30, message=f"process {pid} to end")
