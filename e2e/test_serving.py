"""Serving on the real control plane: TensorRT-LLM models on (kwok) GPU nodes, an
unschedulable GPU request reported with the scheduler's message, and a
ContextualDeployment that becomes Ready only after its dependencies, with its
PostgreSQL feedback store migrated by a real Job.

kwok stands in for GPU nodes (it marks pods Ready and Jobs' pods Succeeded without
running them): no GPU and no TensorRT-LLM can run here.
"""

from __future__ import annotations

import json
from typing import Any

from harness.cluster import Cluster, wait_for

H100 = "NVIDIA-H100-80GB-HBM3"


def _status(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get(kind, name, "-n", ns).get("status") or {}
    return status


def _condition(cluster: Cluster, kind: str, name: str, ns: str, ctype: str) -> dict[str, Any]:
    for c in _status(cluster, kind, name, ns).get("conditions", []):
        if c["type"] == ctype:
            return dict(c)
    return {}


def _bind_cache_volume(cluster: Cluster, ns: str, model: str) -> None:
    """The harness has no storage provisioner: give the model cache a volume by hand."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{ns}-{model}-cache"[:63]},
            "spec": {
                "capacity": {"storage": "200Gi"},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "hostPath": {"path": f"/var/tmp/{ns}-{model}"},
                "claimRef": {"namespace": ns, "name": f"{model}-cache"},
                "persistentVolumeReclaimPolicy": "Delete",
            },
        }
    )


def _model(ns: str, name: str, serving: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "AlignedModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"base": {"model": "models/llama-3.1-8b-instruct"}, "serving": serving},
    }


def test_tensorrt_model_builds_its_engine_and_serves_on_gpu_nodes(
    cluster: Cluster, system: dict[str, Any]
) -> None:
    ns, op = system["namespace"], system["operator"]
    _bind_cache_volume(cluster, ns, "llm")
    cluster.apply(
        _model(ns, "llm", {
            "engine": "tensorrt-llm", "gpus": 2, "tensorParallel": 2, "gpuProduct": H100,
            "quantization": "fp8", "replicas": 2, "sharedMemory": "4Gi",
        })
    )  # fmt: skip
    wait_for(
        lambda: _condition(cluster, "alignedmodel", "llm", ns, "Ready").get("status") == "True",
        timeout=180,
        message=lambda: f"llm Ready: {json.dumps(_status(cluster, 'alignedmodel', 'llm', ns))}"
        f"\n{op.log()[-3000:]}",
    )
    status = _status(cluster, "alignedmodel", "llm", ns)
    assert status["servingRevision"] == "base"
    assert status["engine"]["state"] == "Ready"
    assert status["endpoint"] == f"http://llm-triton.{ns}.svc:8000"

    jobs = cluster.get("jobs", "-n", ns, "-l", "app.kubernetes.io/component=engine")["items"]
    assert len(jobs) == 1
    build = next(c for c in jobs[0]["spec"]["template"]["spec"]["initContainers"] if c["name"] == "build")
    assert build["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--qformat fp8" in build["command"][-1] and "trtllm-build" in build["command"][-1]

    pods = cluster.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=triton")["items"]
    assert len(pods) == 2
    for pod in pods:
        node = cluster.get("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
        container = pod["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
        assert any(v["name"] == "shm" and v["emptyDir"]["medium"] == "Memory" for v in pod["spec"]["volumes"])
    config = cluster.get("configmap", "-n", ns, "-l", "app.kubernetes.io/component=triton")["items"]
    assert {"ensemble__config.pbtxt", "tensorrt_llm__config.pbtxt"} <= set(config[0]["data"])


def test_a_gpu_nobody_has_is_reported_unschedulable(cluster: Cluster, system: dict[str, Any]) -> None:
    ns = system["namespace"]
    _bind_cache_volume(cluster, ns, "b200")
    cluster.apply(_model(ns, "b200", {"engine": "tensorrt-llm", "gpus": 8, "gpuProduct": "NVIDIA-B200"}))
    engine = wait_for(
        lambda: (c := _condition(cluster, "alignedmodel", "b200", ns, "EngineReady")).get("reason")
        == "Unschedulable" and c,
        timeout=120,
        message=lambda: f"EngineReady=Unschedulable: {_status(cluster, 'alignedmodel', 'b200', ns)}",
    )
    assert engine["status"] == "False"
    assert "node(s)" in engine["message"], engine  # the scheduler's own words
    assert _status(cluster, "alignedmodel", "b200", ns)["phase"] == "Failed"
    events = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=b200")["items"]
    assert any(e["reason"] == "Unschedulable" for e in events)


def test_contextual_deployment_waits_for_its_dependencies(
    cluster: Cluster, system: dict[str, Any]
) -> None:
    ns, op = system["namespace"], system["operator"]
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "feedback-db", "namespace": ns},
            "stringData": {"dsn": cluster.env["CONTEXTLM_E2E_POSTGRES_DSN"]},
        }
    )
    deployment = {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "ContextualDeployment",
        "metadata": {"name": "assistant", "namespace": ns},
        "spec": {
            "retrievalRef": {"name": "search"},
            "modelRef": {"name": "small"},
            "prompt": {"maxContextTokens": 512, "maxTokens": 64},
            "gateway": {"replicas": 2},
            "feedback": {"store": {"backend": "postgres", "postgres": {"secretRef": {"name": "feedback-db", "key": "dsn"}}}},
        },
    }
    cluster.apply([deployment, _model(ns, "small", {"engine": "transformers", "maxInputLength": 1024})])
    deps = wait_for(
        lambda: (c := _condition(cluster, "contextualdeployment", "assistant", ns, "DependenciesReady"))
        .get("status") == "False" and c,
        timeout=60, message="DependenciesReady=False",
    )  # fmt: skip
    assert deps["reason"] == "RetrievalStackNotFound" and "search" in deps["message"]
    assert not cluster.exists("deployment", "assistant-gateway", "-n", ns)

    cluster.apply(
        [
            {
                "apiVersion": "contextlm.io/v1alpha1",
                "kind": "Corpus",
                "metadata": {"name": "notes", "namespace": ns},
                "spec": {"source": {"inline": {"documents": [
                    {"id": "a.md", "text": "# Returns\nDevices may be returned within 30 days."},
                    {"id": "b.md", "text": "# Warranty\nTwo years against manufacturing defects."},
                ]}}},
            },
            {
                "apiVersion": "contextlm.io/v1alpha1",
                "kind": "RetrievalStack",
                "metadata": {"name": "search", "namespace": ns},
                "spec": {"corpusRef": {"name": "notes"}, "retrievers": [{"name": "bm25", "sparse": {}}]},
            },
        ]
    )  # fmt: skip
    result = cluster.kubectl(
        "wait", "contextualdeployment/assistant", "-n", ns, "--for=condition=Ready",
        "--timeout=480s", check=False, timeout=500,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"{json.dumps(_status(cluster, 'contextualdeployment', 'assistant', ns), indent=1)}\n"
        f"{op.log()[-4000:]}"
    )
    status = _status(cluster, "contextualdeployment", "assistant", ns)
    stack = _status(cluster, "retrievalstack", "search", ns)
    assert status["indexVersion"] == stack["servingIndexVersion"]
    assert status["modelRevision"] == "base"
    assert status["endpoint"] == f"http://assistant-gateway.{ns}.svc:80"
    assert status["feedback"] == {"up": 0, "down": 0, "corrections": 0}  # read from PostgreSQL
    migrated = _condition(cluster, "contextualdeployment", "assistant", ns, "FeedbackStoreMigrated")
    assert migrated["status"] == "True"
    gateway = cluster.get("deployment", "assistant-gateway", "-n", ns)
    env = {e["name"] for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "CONTEXTLM_FEEDBACK_DSN" in env
    assert gateway["spec"]["replicas"] == 2
