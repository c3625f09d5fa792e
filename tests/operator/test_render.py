"""Render functions: deterministic manifests, checked against golden files."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import load_examples

from contextlm.api import validate_manifest
from contextlm.api.corpus import CorpusSpec
from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.store import StoreConfig
from contextlm_operator.render import corpus as corpus_render
from contextlm_operator.render import retrieval_stack as stack_render
from contextlm_operator.render.common import Owner, hpa, inputs_hash
from contextlm_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    image="contextlm/contextlm:test",
    store=StoreConfig(kind="s3", endpoint="http://minio.storage.svc:9000", bucket="artifacts"),
    job_node_selector={"contextlm.io/executor": "true"},
    job_tolerations=[
        {"key": "contextlm.io/executor", "operator": "Exists", "effect": "NoSchedule"}
    ],
)
EXAMPLES = {name.split(":")[1]: doc for name, doc in load_examples() if "production" in name}


def _owner(doc: dict[str, Any]) -> Owner:
    return Owner(doc["apiVersion"], doc["kind"], doc["metadata"]["name"], "support", "uid-1234")


def _spec(kind_name: str) -> tuple[Owner, Any]:
    doc = EXAMPLES[kind_name]
    return _owner(doc), validate_manifest(doc).spec  # type: ignore[attr-defined]


def test_corpus_children_match_golden(golden: Any) -> None:
    owner, spec = _spec("Corpus/support-handbook")
    inputs = corpus_render.sync_inputs(spec, SETTINGS)
    golden(
        "corpus-sync-configmap", corpus_render.render_sync_config_map(owner, spec, SETTINGS, inputs)
    )
    golden("corpus-sync-job", corpus_render.render_sync_job(owner, spec, SETTINGS, inputs))
    golden(
        "corpus-refresh-cronjob",
        corpus_render.render_refresh_cronjob(owner, spec, SETTINGS, inputs),
    )


def test_retrieval_stack_children_match_golden(golden: Any) -> None:
    owner, spec = _spec("RetrievalStack/support-retrieval")
    inputs = stack_render.index_inputs(spec, "snap-1", SETTINGS)
    golden("retrieval-index-job", stack_render.render_index_job(owner, spec, SETTINGS, inputs))
    golden(
        "retrieval-retriever-deployment",
        stack_render.render_retriever_deployment(owner, spec, SETTINGS, "idx-1"),
    )
    golden("retrieval-retriever-service", stack_render.render_retriever_service(owner))


def test_job_names_are_a_hash_of_the_inputs() -> None:
    owner, spec = _spec("Corpus/support-handbook")
    a = corpus_render.sync_inputs(spec, SETTINGS)
    assert a == corpus_render.sync_inputs(CorpusSpec.model_validate(spec.model_dump()), SETTINGS)
    changed = spec.model_copy(deep=True)
    changed.extraction.chunking.size = 300
    assert corpus_render.sync_inputs(changed, SETTINGS) != a
    assert corpus_render.sync_inputs(spec, SETTINGS, resync="2026-01-01") != a
    job = corpus_render.render_sync_job(owner, spec, SETTINGS, a)
    assert job["metadata"]["name"] == f"support-handbook-sync-{a}"
    assert len(job["metadata"]["name"]) <= 63


def test_serving_changes_do_not_rebuild_the_index() -> None:
    _, spec = _spec("RetrievalStack/support-retrieval")
    before = stack_render.index_inputs(spec, "snap-1", SETTINGS)
    scaled = spec.model_copy(deep=True)
    scaled.serving.replicas = 7
    scaled.top_k = 5
    assert stack_render.index_inputs(scaled, "snap-1", SETTINGS) == before
    assert stack_render.index_inputs(spec, "snap-2", SETTINGS) != before


def test_jobs_run_where_the_operator_is_told_and_pods_are_hardened() -> None:
    owner, spec = _spec("RetrievalStack/support-retrieval")
    job = stack_render.render_index_job(owner, spec, SETTINGS, "abc")
    pod = job["spec"]["template"]["spec"]
    # A GPU Job goes where the GPUs are; the operator's Job placement is for CPU Jobs.
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    corpus_owner, corpus_spec = _spec("Corpus/support-handbook")
    sync = corpus_render.render_sync_job(corpus_owner, corpus_spec, SETTINGS, "abc")
    assert sync["spec"]["template"]["spec"]["nodeSelector"] == {"contextlm.io/executor": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert job["metadata"]["ownerReferences"][0]["controller"] is True


def test_autoscaled_retriever_leaves_replicas_to_the_hpa() -> None:
    owner, spec = _spec("RetrievalStack/support-retrieval")
    assert (
        stack_render.render_retriever_deployment(owner, spec, SETTINGS, "v")["spec"]["replicas"]
        == 2
    )
    scaled = RetrievalStackSpec.model_validate(
        {**spec.model_dump(by_alias=True), "serving": {"autoscaling": {"maxReplicas": 5}}}
    )
    deployment = stack_render.render_retriever_deployment(owner, scaled, SETTINGS, "v")
    assert "replicas" not in deployment["spec"]
    assert scaled.serving.autoscaling is not None
    scaler = hpa(owner, "retriever", scaled.serving.autoscaling)
    assert scaler["spec"]["maxReplicas"] == 5
    assert scaler["spec"]["scaleTargetRef"]["name"] == "support-retrieval-retriever"


def test_a_new_index_version_rolls_the_pods() -> None:
    owner, spec = _spec("RetrievalStack/support-retrieval")
    a = stack_render.render_retriever_deployment(owner, spec, SETTINGS, "v1")
    b = stack_render.render_retriever_deployment(owner, spec, SETTINGS, "v2")
    assert a["spec"]["template"] != b["spec"]["template"]
    assert a["spec"]["selector"] == b["spec"]["selector"]


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], "x"])
def test_inputs_hash_is_stable(value: Any) -> None:
    assert inputs_hash(value) == inputs_hash(value)
    assert len(inputs_hash(value)) == 10


def test_tensorrt_children_request_gpus_on_the_right_nodes(golden: Any) -> None:
    from contextlm_operator.render import tensorrt

    owner, spec = _spec("AlignedModel/support-llm")
    config_maps, build = tensorrt.render_engine_build(owner, spec, SETTINGS, "base")
    golden("tensorrt-engine-job", build)
    pod = build["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "contextlm.io/executor" not in pod["nodeSelector"]  # GPU Jobs go where GPUs are
    builder = next(c for c in pod["initContainers"] if c["name"] == "build")
    assert builder["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "trtllm-build" in builder["command"][-1]
    engine = tensorrt.engine_id(spec, "base")
    repository, files = tensorrt.repository_config_map(owner, spec, "base", engine)
    deployment = tensorrt.render_triton_deployment(
        owner, spec, SETTINGS, revision="base", engine=engine, repository=repository, files=files
    )
    golden("tensorrt-triton-deployment", deployment)
    triton = deployment["spec"]["template"]["spec"]
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    cache = next(v for v in triton["volumes"] if v["name"] == "cache")
    assert cache["persistentVolumeClaim"] == {"claimName": "support-llm-cache", "readOnly": True}
    shm = next(v for v in triton["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert len(config_maps) == 2 and set(repository["data"]) >= {"ensemble__config.pbtxt"}


def test_mig_slice_requests_the_mig_resource() -> None:
    from contextlm.api.aligned_model import AlignedModelSpec
    from contextlm_operator.render import aligned_model

    spec = AlignedModelSpec.model_validate(
        {"base": {"model": "m"}, "serving": {"engine": "tensorrt-llm", "migProfile": "1g.10gb"}}
    )
    assert aligned_model.gpu_request(spec.serving) == ("nvidia.com/mig-1g.10gb", 1)
    _selector, tolerations = aligned_model.gpu_placement(spec.serving)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_generator_and_gateway_match_golden(golden: Any) -> None:
    from contextlm_operator.render import aligned_model, contextual_deployment

    owner, spec = _spec("AlignedModel/support-llm")
    cpu = spec.model_copy(deep=True)
    cpu.serving.engine = "transformers"
    cpu.serving.gpus, cpu.serving.quantization, cpu.serving.tensor_parallel = None, "none", 1
    golden(
        "generator-deployment",
        aligned_model.render_generator_deployment(owner, cpu, SETTINGS, "rev-1"),
    )
    cd_owner, cd_spec = _spec("ContextualDeployment/support-assistant")
    config = contextual_deployment.gateway_config(
        cd_owner,
        cd_spec,
        SETTINGS,
        retriever_url="http://r",
        generator_url="http://g:8000",
        generator_grpc="g:8001",
        tokenizer="models/llama",
        model_revision="rev-1",
    )
    _, deployment = contextual_deployment.render_gateway(cd_owner, cd_spec, SETTINGS, config)
    golden("gateway-deployment", deployment)
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CONTEXTLM_FEEDBACK_DSN"]["valueFrom"]["secretKeyRef"]["name"] == "feedback-postgres"
    assert env["CONTEXTLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "apiKey"
    assert "replicas" not in deployment["spec"]  # autoscaled
    _, job = contextual_deployment.render_migrate(cd_owner, cd_spec, SETTINGS, "abc")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "migrate"


def test_alignment_run_steps_are_jobs_with_the_right_inputs() -> None:
    from contextlm.alignment import STEPS
    from contextlm.api.alignment_run import AlignmentRunSpec
    from contextlm_operator.render import alignment_run

    _, model = _spec("AlignedModel/support-llm")
    _, deployment = _spec("ContextualDeployment/support-assistant")
    run = AlignmentRunSpec.model_validate({"modelRef": {"name": "support-llm"}})
    owner = Owner("contextlm.io/v1alpha1", "AlignmentRun", "support-llm-1", "support", "u")
    jobs = {}
    for step in STEPS:
        config = alignment_run.step_config(
            owner, step, run=run, model=model, deployment=("support-assistant", deployment),
            base_revision="base", candidate="rev-2", retriever_url="http://r", settings=SETTINGS,
        )  # fmt: skip
        _cm, job = alignment_run.render_step(
            owner, step, config, model=model, deployment=deployment, settings=SETTINGS
        )
        assert job["metadata"]["name"] == f"support-llm-1-{step}"
        jobs[step] = (config, job["spec"]["template"]["spec"])
    export_env = {e["name"] for e in jobs["export"][1]["containers"][0]["env"]}
    assert "CONTEXTLM_FEEDBACK_DSN" in export_env
    assert jobs["export"][0]["feedback"]["deployment"] == "support/support-assistant"
    assert jobs["train"][0]["merge"] is True  # TensorRT-LLM engines are built from merged weights
    assert jobs["train"][0]["alignment"]["method"] == "kto"
    assert jobs["train"][1]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nodeSelector" not in jobs["train"][1]  # a GPU Job is not steered to the CPU executor
    assert jobs["evaluate"][0]["candidate_revision"] == "rev-2"
    mounts = {m["name"] for m in jobs["evaluate"][1]["containers"][0]["volumeMounts"]}
    assert "evaluation" in mounts
    assert jobs["export"][1]["nodeSelector"] == {"contextlm.io/executor": "true"}


def test_the_newest_promoted_revision_is_the_target() -> None:
    from contextlm_operator.reconcile.aligned_model import target_revision

    _, model = _spec("AlignedModel/support-llm")
    assert target_revision(model, {}) == "base"
    history = [
        {"id": "r1", "created": "2026-01-01T00:00:00Z", "promoted": True},
        {"id": "r2", "created": "2026-01-02T00:00:00Z", "promoted": False},
        {"id": "r3", "created": "2026-01-03T00:00:00Z", "promoted": True},
        {"id": "r4", "created": "2026-01-04T00:00:00Z", "promoted": False},
    ]
    assert target_revision(model, {"revisions": history}) == "r3"
