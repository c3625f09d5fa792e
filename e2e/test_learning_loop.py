"""The learning loop on the real control plane, end to end.

Feedback is posted through the gateway the operator rendered (run locally from its
ConfigMap, with the retriever and generator it talks to, since kwok only pretends to run
Deployments) into the real PostgreSQL; the AlignedModel's trigger opens an AlignmentRun;
its export, train and evaluate Jobs really run on the executor node against the real S3
server; the gate decides; promotion changes the serving revision and rolls the
generator, whose new pod config loads the trained revision from the store.

1. Corrections through APO-zero (trigger: minFeedback): the run is Promoted with both
   scores in its status and the model's history, and the generator Deployment rolls.
2. Random thumbs through KTO (trigger: the schedule, below minFeedback): the run is
   Rejected and nothing that serves changes.

The model is a tiny random Llama built by the test and put in the store as
models/tiny (SmolLM2's learning is proven in tests/runtime/test_train_learning.py;
here the point is the system, and a tiny model keeps each Job to seconds).
"""

from __future__ import annotations

import json
import random
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness.cluster import Cluster, free_port, wait_for
from harness.local_pods import rendered, run_deployment
from harness.s3 import S3

# The tiny Llama the runtime tests build (and the helpers it needs), not a copy of it.
TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "runtime")]
from generator_helpers import build_tiny_llama

pytestmark = pytest.mark.integration

DOCUMENTS = {
    "returns.md": "# Returns\nDevices may be returned within 30 days of delivery for a refund.",
    "warranty.md": "# Warranty\nEvery device has a two-year warranty against defects.",
    "support.md": "# Support\nPhone support is open Monday to Friday, 9 to 5.",
}
# (question, the answer a user corrects the model's answer to)
QUESTIONS = [
    ("How long do I have to return a device?", "Within 30 days of delivery [1]."),
    ("What does the warranty cover?", "Defects, for two years [1]."),
    ("When can I call support?", "Monday to Friday, 9 to 5 [1]."),
]
CORRECTIONS = 30  # APO-zero pairs; minFeedback
NOISE = 48  # random thumbs, below minFeedback: only the schedule can start their run
HELD_OUT = 0.5
MIN_IMPROVEMENT = 0.3


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def _status(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get(kind, name, "-n", ns).get("status") or {}
    return status


def _runs(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get("alignmentruns", "-n", ns)["items"]
    return sorted(items, key=lambda r: (r["metadata"]["creationTimestamp"], r["metadata"]["name"]))


def _model(ns: str, alignment: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "contextlm.io/v1alpha1",
        "kind": "AlignedModel",
        "metadata": {"name": "tiny", "namespace": ns},
        "spec": {
            "base": {"model": "models/tiny"},
            "serving": {"engine": "transformers", "maxInputLength": 512, "maxOutputLength": 32},
            "alignment": alignment,
        },
    }


ALIGNMENT = {
    "method": "apo-zero",
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    "beta": 0.1,
    "learningRate": 0.005,
    "maxSteps": 24,
    "batchSize": 4,
    "trigger": {"minFeedback": CORRECTIONS},
    "evaluation": {
        "metric": "preference-accuracy",
        "minImprovement": MIN_IMPROVEMENT,
        "heldOutFraction": HELD_OUT,
    },
}


def _wait_final(cluster: Cluster, ns: str, name: str, op: Any) -> dict[str, Any]:
    return wait_for(
        lambda: (s := _status(cluster, "alignmentrun", name, ns)).get("phase") in ("Promoted", "Rejected", "Failed") and s,
        timeout=600, interval=2,
        message=lambda: f"run {name} final: {json.dumps(_status(cluster, 'alignmentrun', name, ns))}\n"
        f"{cluster.kubectl('get', 'jobs,pods', '-n', ns, '-o', 'wide', check=False).stdout}\n{op.log()[-3000:]}",
    )  # fmt: skip


def test_feedback_trains_gates_and_promotes_or_rejects(
    cluster: Cluster, system: dict[str, Any], s3: S3, tmp_path: Path
) -> None:
    ns, op, artifacts = system["namespace"], system["operator"], system["artifacts"]
    tiny = build_tiny_llama(tmp_path / "tiny")
    for path in sorted(p for p in tiny.rglob("*") if p.is_file()):
        s3.put(artifacts, f"models/tiny/{path.relative_to(tiny).as_posix()}", path.read_bytes())
    cluster.apply({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "feedback-db", "namespace": ns},
        "stringData": {"dsn": cluster.env["CONTEXTLM_E2E_POSTGRES_DSN"]},
    })  # fmt: skip
    cluster.apply([
        {"apiVersion": "contextlm.io/v1alpha1", "kind": "Corpus", "metadata": {"name": "handbook", "namespace": ns},
         "spec": {"source": {"inline": {"documents": [{"id": k, "text": v} for k, v in DOCUMENTS.items()]}}}},
        {"apiVersion": "contextlm.io/v1alpha1", "kind": "RetrievalStack", "metadata": {"name": "search", "namespace": ns},
         "spec": {"corpusRef": {"name": "handbook"}, "retrievers": [{"name": "bm25", "sparse": {}}]}},
        _model(ns, ALIGNMENT),
        {"apiVersion": "contextlm.io/v1alpha1", "kind": "ContextualDeployment",
         "metadata": {"name": "assistant", "namespace": ns},
         "spec": {"retrievalRef": {"name": "search"}, "modelRef": {"name": "tiny"},
                  "prompt": {"maxContextTokens": 256, "maxTokens": 12},
                  "feedback": {"store": {"backend": "postgres",
                                         "postgres": {"secretRef": {"name": "feedback-db", "key": "dsn"}}}}}},
    ])  # fmt: skip
    ready = cluster.kubectl(
        "wait", "contextualdeployment/assistant", "-n", ns, "--for=condition=Ready", "--timeout=480s",
        check=False, timeout=500,
    )  # fmt: skip
    assert ready.returncode == 0, (
        f"{_status(cluster, 'contextualdeployment', 'assistant', ns)}\n{op.log()[-4000:]}"
    )

    env = {
        "CONTEXTLM_S3_ACCESS_KEY": cluster.env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        "CONTEXTLM_S3_SECRET_KEY": cluster.env["CONTEXTLM_E2E_S3_SECRET_KEY"],
        "CONTEXTLM_FEEDBACK_DSN": cluster.env["CONTEXTLM_E2E_POSTGRES_DSN"],
        "CONTEXTLM_API_KEY": "",
    }
    work = tmp_path / "pods"
    before = cluster.get("deployment", "tiny-generator", "-n", ns)
    assert before["metadata"]["annotations"]["contextlm.io/revision"] == "base"
    retriever_port, http_port, gateway_port = free_port(), free_port(), free_port()
    cache = {"cache_dir": str(work / "cache")}

    def generator(port: int) -> Any:
        return run_deployment(cluster, ns, "tiny-generator", work=work / f"generator-{port}", env=env,
                              overrides={**cache, "host": "127.0.0.1", "http_port": port, "grpc_port": 0},
                              ready_path="/v2/health/ready", port=port)  # fmt: skip

    def ask_and_rate(count: int, rate: Any) -> None:
        for i in range(count):
            question, _ = QUESTIONS[i % len(QUESTIONS)]
            answer = _post(f"{gateway_url}/v1/query", {"question": f"{question} (#{i})"})
            _post(f"{gateway_url}/v1/feedback",
                  {"query_id": answer["query_id"], "idempotency_key": answer["query_id"], **rate(i)})  # fmt: skip

    with (
        run_deployment(cluster, ns, "search-retriever", work=work / "retriever", env=env,
                       overrides={**cache, "host": "127.0.0.1", "port": retriever_port},
                       ready_path="/readyz", port=retriever_port),
        generator(http_port),
        run_deployment(cluster, ns, "assistant-gateway", work=work / "gateway", env=env,
                       overrides={**cache, "host": "127.0.0.1", "port": gateway_port,
                                  "retriever_url": f"http://127.0.0.1:{retriever_port}",
                                  "generator_url": f"http://127.0.0.1:{http_port}", "generator_grpc": None},
                       ready_path="/readyz", port=gateway_port),
    ):  # fmt: skip
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        # 1. Users correct the answers: pairs (correction preferred over the answer).
        ask_and_rate(
            CORRECTIONS,
            lambda i: {"rating": "down", "correction": QUESTIONS[i % len(QUESTIONS)][1]},
        )
        first = wait_for(
            lambda: _runs(cluster, ns), timeout=120, message="the trigger opens a run"
        )[0]
        name = first["metadata"]["name"]
        assert first["spec"]["baseRevision"] == "base"
        status = _wait_final(cluster, ns, name, op)
        assert status["phase"] == "Promoted", json.dumps(status, indent=1)
        gate = status["gate"]
        assert gate["decision"] == "Promote"
        assert gate["candidateScore"] >= gate["baselineScore"] + MIN_IMPROVEMENT
        assert status["dataset"]["pairs"] > 0 and status["dataset"]["heldOut"] > 0
        revision = status["outputRevision"]
        model = wait_for(
            lambda: (m := _status(cluster, "alignedmodel", "tiny", ns)).get("servingRevision") == revision and m,
            timeout=60, message="the AlignedModel serves the promoted revision",
        )  # fmt: skip
        history = {r["id"]: r for r in model["revisions"]}
        assert history[revision]["promoted"] and history[revision]["alignmentRun"] == name
        assert history[revision]["scores"]["candidate"] == pytest.approx(gate["candidateScore"])
        rolled = wait_for(
            lambda: (d := cluster.get("deployment", "tiny-generator", "-n", ns))["spec"]["template"]["metadata"]
            ["annotations"]["contextlm.io/revision"] == revision and d,
            timeout=60, message="the generator Deployment rolls to the new revision",
        )  # fmt: skip
        assert rolled["metadata"]["generation"] > before["metadata"]["generation"]
        _, config, _ = rendered(cluster, ns, "tiny-generator")
        assert (config["revision"], config["aligned_model"], config["namespace"]) == (
            revision,
            "tiny",
            ns,
        )
        wait_for(lambda: _status(cluster, "contextualdeployment", "assistant", ns).get("modelRevision") == revision,
                 timeout=60, message="the deployment reports the new revision")  # fmt: skip

        # 2. Random thumbs, then a schedule: the run it opens learns nothing and is rejected.
        cluster.apply(_model(ns, {**ALIGNMENT, "method": "kto", "trigger": {"minFeedback": 1000}}))
        coin = random.Random(7)
        ask_and_rate(NOISE, lambda i: {"rating": coin.choice(["up", "down"])})
        serving = cluster.get("deployment", "tiny-generator", "-n", ns)
        cluster.apply(_model(ns, {**ALIGNMENT, "method": "kto",
                                  "trigger": {"minFeedback": 1000, "schedule": "* * * * *"}}))  # fmt: skip
        second = wait_for(lambda: len(runs := _runs(cluster, ns)) > 1 and runs[-1], timeout=150,
                          message="the schedule opens a second run")  # fmt: skip
        assert second["spec"]["baseRevision"] == revision
        status = _wait_final(cluster, ns, second["metadata"]["name"], op)
        assert status["phase"] == "Rejected", json.dumps(status, indent=1)
        assert status["gate"]["decision"] == "Reject"
        assert status["dataset"]["desirable"] > 0 and status["dataset"]["undesirable"] > 0

    model = _status(cluster, "alignedmodel", "tiny", ns)
    assert model["servingRevision"] == revision
    rejected = {r["id"]: r for r in model["revisions"]}.get(status.get("outputRevision"))
    assert rejected is None or not rejected["promoted"]
    after = cluster.get("deployment", "tiny-generator", "-n", ns)
    assert after["metadata"]["generation"] == serving["metadata"]["generation"]
    assert after["spec"]["template"] == serving["spec"]["template"]

    # The rolled generator's config loads the trained revision from the store and serves.
    port = free_port()
    with generator(port) as served:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert f'revision="{revision}"' in metrics, served.output()
