"""`contextlm evaluate`: the text metrics, the gate, and whole evaluations of a revision
trained on a tiny model, on held-out feedback and on an evaluation set answered through a
real `contextlm retriever` process (BM25 over a small corpus).

Whether the scores move the right way after real learning is shown with the small real
model in test_train_learning.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alignment_support import (
    MODEL,
    NS,
    ListSource,
    publish_dataset,
    save_tiny_model,
    tiny_feedback,
    train_config,
)
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    RetrieverProcess,
    corpus_chunks,
    index_config,
    publish_snapshot,
    stack_spec,
)

from contextlm.api.aligned_model import Alignment
from contextlm.runtime.config import EvaluateConfig, ExportConfig, FeedbackSource, RetrieverConfig
from contextlm.runtime.evaluate import (
    citation_correctness,
    evaluate,
    gate,
    load_evaluation_set,
    recall_at_k,
    token_f1,
)
from contextlm.runtime.feedback.export import export
from contextlm.runtime.prompting import ContextChunk
from contextlm.runtime.store import LocalStore, StoreConfig
from contextlm.runtime.train import train


def chunk(n: int, text: str, doc: str = "d.md") -> ContextChunk:
    return ContextChunk(chunk_id=f"c{n}", doc_id=doc, uri=f"s3://x/{doc}", text=text, rank=n)


# Text metrics --------------------------------------------------------------------------


def test_token_f1_is_squad_style_and_ignores_citation_markers() -> None:
    assert token_f1("The Vega backups are in Lima [2].", "Vega backups are in Lima") == 1.0
    assert token_f1("in Lima", "The Vega backups are in Lima") == pytest.approx(2 * 1 * 0.4 / 1.4)
    assert token_f1("Oslo", "Lima") == 0.0
    assert token_f1("", "") == 1.0


def test_a_citation_is_correct_when_its_chunk_supports_its_sentence() -> None:
    chunks = [
        chunk(1, "Jupiter is the largest planet of the solar system."),
        chunk(2, "Preheat the oven to 220 degrees."),
    ]
    answer = "Jupiter is the largest planet [1]. Insulin lowers blood glucose [2]."
    assert citation_correctness(answer, chunks) == 0.5
    assert citation_correctness("Jupiter is the largest planet [1, 2].", chunks) == 0.5
    assert (
        citation_correctness("Jupiter is the largest planet [7].", chunks) == 0.0
    )  # not in the prompt
    assert citation_correctness("Jupiter is the largest planet.", chunks) == 0.0  # uncited
    assert citation_correctness("Preheat the oven to 220 degrees [2].", chunks) == 1.0


def test_recall_at_k_counts_relevant_documents_found() -> None:
    assert recall_at_k(["a", "b"], ["b", "c", "b"]) == 0.5
    assert recall_at_k(["a"], ["a"]) == 1.0


def test_evaluation_sets_load_from_json_lines_arrays_and_configmap_folders(tmp_path: Path) -> None:
    lines = tmp_path / "set.jsonl"
    lines.write_text(
        '{"question": "q1", "referenceAnswer": "a1", "relevantDocIds": ["d1"]}\n'
        '{"query": "q2", "relevant_doc_ids": ["d2", "d3"]}\n'
    )
    items = load_evaluation_set(str(lines))
    assert [(i.question, i.reference_answer, i.relevant_doc_ids) for i in items] == [
        ("q1", "a1", ("d1",)),
        ("q2", None, ("d2", "d3")),
    ]
    folder = tmp_path / "configmap"
    folder.mkdir()
    (folder / "a.json").write_text('[{"question": "q3", "answer": "a3"}]')
    (folder / "b.jsonl").write_text('{"question": "q4"}\n')
    (folder / "..data").mkdir()  # what a mounted ConfigMap also holds
    assert [i.question for i in load_evaluation_set(str(folder))] == ["q3", "q4"]
    (folder / "c.jsonl").write_text('{"referenceAnswer": "no question"}\n')
    with pytest.raises(ValueError, match="no question"):
        load_evaluation_set(str(folder))


# The gate ----------------------------------------------------------------------------


def test_the_gate_promotes_only_by_the_minimum_improvement() -> None:
    scores = {"candidate": {"preferenceAccuracy": 0.61}, "baseline": {"preferenceAccuracy": 0.5}}
    promote = gate("preference-accuracy", scores, min_improvement=0.11)
    assert promote == {
        "metric": "preference-accuracy",
        "minImprovement": 0.11,
        "candidateScore": 0.61,
        "baselineScore": 0.5,
        "decision": "Promote",
    }
    assert gate("preference-accuracy", scores, min_improvement=0.12)["decision"] == "Reject"
    equal = {"candidate": {"retrievalRecall": 0.8}, "baseline": {"retrievalRecall": 0.8}}
    assert gate("retrieval-recall", equal, min_improvement=0.0)["decision"] == "Promote"
    assert gate("retrieval-recall", equal, min_improvement=0.01)["decision"] == "Reject"
    missing = gate("answer-overlap", scores, min_improvement=0.0)
    assert missing["decision"] == "Reject" and "could not be scored" in missing["reason"]


# Whole evaluations on the tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def trained(tmp_path: Path, tiny_dir: Path) -> tuple[LocalStore, str]:
    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback(30))
    config = train_config(tmp_path, tiny_dir, store, alignment={"method": "apo-zero"})
    revision: str = train(config, store)["revision"]
    return store, revision


def eval_config(
    tmp_path: Path, tiny_dir: Path, store: LocalStore, **overrides: Any
) -> EvaluateConfig:
    alignment = overrides.pop("alignment", {})
    values: dict[str, Any] = {
        "namespace": NS,
        "model": MODEL,
        "run": "run-1",
        "base_model": str(tiny_dir),
        "baseline_revision": "base",
        "alignment": Alignment.model_validate({"beta": 0.2, **alignment}),
        "store": StoreConfig(kind="local", path=str(store.root)),
        "cache_dir": str(tmp_path / "cache"),
        "device": "cpu",
        "threads": 1,
        "max_new_tokens": 8,
    }
    values.update(overrides)
    return EvaluateConfig.model_validate(values)


def held_out_export(store: LocalStore, run: str) -> None:
    """Export the feedback again with half of it held out, so there is something to score."""
    config = ExportConfig(
        namespace=NS,
        model=MODEL,
        run=run,
        feedback=FeedbackSource(backend="sqlite", deployment="team/docs"),
        store=StoreConfig(kind="local", path=str(store.root)),
        held_out_fraction=0.5,
        since_last_run=False,
    )
    export(config, store, rows_source=ListSource(tiny_feedback(30)))


def test_a_candidate_is_scored_against_the_serving_revision_on_held_out_feedback(
    tmp_path: Path,
    tiny_dir: Path,
    trained: tuple[LocalStore, str],
) -> None:
    store, revision = trained
    held_out_export(store, "eval-1")
    config = eval_config(
        tmp_path,
        tiny_dir,
        store,
        run="eval-1",
        candidate_revision=revision,
        alignment={"evaluation": {"metric": "reward-margin", "minImprovement": 0.0}},
    )
    result = evaluate(config, store)
    assert result["referenceRevision"] == "base"  # the candidate's parent
    baseline, candidate = result["scores"]["baseline"], result["scores"]["candidate"]
    # the serving revision is the reference: its implicit reward is 0 everywhere
    assert baseline["preferenceAccuracy"] == 0.5 and baseline["rewardMargin"] == 0.0
    assert candidate["pairs"] == baseline["pairs"] > 0 and candidate["thumbs"] > 0
    assert result["metric"] == "reward-margin"
    assert result["candidateScore"] == candidate["rewardMargin"]
    assert result["decision"] == ("Promote" if candidate["rewardMargin"] >= 0 else "Reject")
    saved = json.loads(store.get_bytes(f"alignment/{NS}/{MODEL}/runs/eval-1/evaluation.json"))
    assert saved["scores"] == result["scores"]


def test_candidate_and_baseline_may_both_be_trained_revisions(
    tmp_path: Path,
    tiny_dir: Path,
    trained: tuple[LocalStore, str],
) -> None:
    store, first = trained
    publish_dataset(store, "run-2", tiny_feedback(20))
    second = train(
        train_config(
            tmp_path,
            tiny_dir,
            store,
            run="run-2",
            base_revision=first,
            alignment={"method": "apo-zero"},
        ),
        store,
    )["revision"]
    held_out_export(store, "eval-2")
    config = eval_config(
        tmp_path, tiny_dir, store, run="eval-2", candidate_revision=second, baseline_revision=first
    )
    result = evaluate(config, store)
    assert result["referenceRevision"] == first
    assert result["scores"]["baseline"]["preferenceAccuracy"] == 0.5
    assert result["scores"]["candidate"]["pairs"] > 0


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RetrieverProcess, str]]:
    from contextlm.runtime.index import build

    root = tmp_path_factory.mktemp("eval-retriever")
    store = StoreConfig(kind="local", path=str(root / "store"))
    snapshot = publish_snapshot(LocalStore(store.path), corpus_chunks())
    spec = stack_spec(
        retrievers=[{"name": "bm25", "weight": 1.0, "sparse": {"bm25": {"k1": 1.2, "b": 0.75}}}],
        topK=3,
    )
    version = build(index_config(store, root / "work", snapshot, spec))["indexVersion"]
    config = RetrieverConfig(
        namespace=NAMESPACE,
        stack=STACK,
        index_version=version,
        spec=spec,
        store=store,
        cache_dir=str(root / "c"),
    )
    process = RetrieverProcess(config, root)
    try:
        process.wait_ready()
        yield process, version
    finally:
        process.stop()


@pytest.mark.integration
def test_the_evaluation_set_is_answered_through_the_real_retriever(
    tmp_path: Path,
    tiny_dir: Path,
    trained: tuple[LocalStore, str],
    retriever: tuple[RetrieverProcess, str],
) -> None:
    store, revision = trained
    items = tmp_path / "evaluation.jsonl"
    items.write_text(
        "\n".join(
            json.dumps(item)
            for item in [
                {
                    "question": "Which is the largest planet of the solar system?",
                    "referenceAnswer": "Jupiter",
                    "relevantDocIds": ["astronomy.md"],
                },
                {
                    "question": "What lowers blood glucose?",
                    "relevantDocIds": ["medicine.md", "baking.md"],
                },
                {
                    "question": "How is croissant dough made?",
                    "referenceAnswer": "laminated with butter",
                },
            ]
        )
    )
    config = eval_config(
        tmp_path,
        tiny_dir,
        store,
        candidate_revision=revision,
        evaluation_set=str(items),
        retriever_url=retriever[0].url,
        top_k=3,
        alignment={
            "evaluation": {
                "metric": "retrieval-recall",
                "minImprovement": 0.0,
                "dataset": {"name": "qa"},
            }
        },
    )
    result = evaluate(config, store)
    candidate, baseline = result["scores"]["candidate"], result["scores"]["baseline"]
    assert candidate["questions"] == 3
    # recall depends on retrieval only: the same for both, 1.0 for the first question and
    # 0.5 for the second (baking.md does not answer it)
    assert candidate["retrievalRecall"] == baseline["retrievalRecall"] == 0.75
    for scores in (candidate, baseline):
        assert 0.0 <= scores["answerOverlap"] <= 1.0 and 0.0 <= scores["citationCorrectness"] <= 1.0
    assert result["decision"] == "Promote"  # equal recall passes a minimum improvement of 0


def test_the_evaluate_command_writes_the_gate_decision(
    tmp_path: Path,
    tiny_dir: Path,
    trained: tuple[LocalStore, str],
) -> None:
    store, revision = trained
    held_out_export(store, "eval-cli")
    config = eval_config(
        tmp_path,
        tiny_dir,
        store,
        run="eval-cli",
        candidate_revision=revision,
        alignment={"evaluation": {"minImprovement": 1.0}},  # cannot be met: accuracy ≤ 1
    )
    path = tmp_path / "evaluate.json"
    path.write_text(config.model_dump_json(by_alias=True))
    termination = tmp_path / "termination"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "evaluate",
            "--config",
            str(path),
            "--termination-log",
            str(termination),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(termination.read_text()) == result
    assert result["decision"] == "Reject" and result["metric"] == "preference-accuracy"
    assert (
        len(done.stdout.strip().splitlines()[-1]) < 4096
    )  # what kubelet keeps of a termination message
