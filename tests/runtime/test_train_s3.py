"""The alignment jobs against a real S3 server (MinIO started by the test run), as they run
in pods: the base model is read from `models/<name>` in the bucket, the dataset is
exported there, and `contextlm train` and `contextlm evaluate` run as the CLI with the
store's credentials in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alignment_support import MODEL, NS, publish_dataset, save_tiny_model, tiny_feedback
from servers import S3Server

from contextlm.api.aligned_model import Alignment
from contextlm.runtime.artifacts import revision_prefix
from contextlm.runtime.config import EvaluateConfig, TrainConfig
from contextlm.runtime.store import S3Store, StoreConfig

pytestmark = pytest.mark.integration


def job(command: str, config: Any, tmp_path: Path, server: S3Server) -> dict[str, Any]:
    path = tmp_path / f"{command}.json"
    path.write_text(config.model_dump_json(by_alias=True))
    done = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", command, "--config", str(path)]
        + ["--termination-log", str(tmp_path / f"{command}.result")],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **server.env(), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_train_and_evaluate_with_everything_in_s3(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    config = StoreConfig(kind="s3", endpoint=s3_server.endpoint, bucket="align", prefix="prod")
    store = S3Store(config)
    store.ensure_bucket()
    store.upload_dir("models/tiny", save_tiny_model(tmp_path / "tiny"))
    publish_dataset(store, "run-1", tiny_feedback(30), held_out_fraction=0.3)

    spec = Alignment.model_validate(
        {
            "method": "dpo",
            "maxSteps": 2,
            "batchSize": 2,
            "learningRate": 1e-2,
            "lora": {"r": 4, "alpha": 8},
            "evaluation": {"metric": "reward-margin", "minImprovement": 0.0},
        }
    )
    common = {
        "namespace": NS,
        "model": MODEL,
        "run": "run-1",
        "base_model": "models/tiny",
        "alignment": spec,
        "store": config,
        "cache_dir": str(tmp_path / "cache"),
        "device": "cpu",
        "threads": 1,
    }
    trained = job(
        "train",
        TrainConfig(**common, merge=True, work_dir=str(tmp_path / "w")),
        tmp_path,
        s3_server,
    )
    prefix = revision_prefix(NS, MODEL, trained["revision"])
    keys = set(store.list(prefix + "/"))
    assert f"{prefix}/manifest.json" in keys
    assert f"{prefix}/adapter/adapter_model.safetensors" in keys
    assert f"{prefix}/merged/model.safetensors" in keys

    evaluated = job(
        "evaluate",
        EvaluateConfig(**common, candidate_revision=trained["revision"], baseline_revision="base"),
        tmp_path,
        s3_server,
    )
    assert evaluated["candidateRevision"] == trained["revision"]
    assert evaluated["scores"]["candidate"]["pairs"] > 0
    assert evaluated["decision"] in ("Promote", "Reject")
    report = json.loads(store.get_bytes(f"alignment/{NS}/{MODEL}/runs/run-1/evaluation.json"))
    assert report["scores"] == evaluated["scores"]
