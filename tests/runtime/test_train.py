"""`contextlm train` end to end on a tiny model the test builds: every method publishes an
immutable revision (adapter, merged weights when asked, manifest last), revisions chain,
and a dataset with nothing to learn from fails with its own exit code.

The learning itself is proven with the real small model in test_train_learning.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alignment_support import (
    MODEL,
    NS,
    publish_dataset,
    save_tiny_model,
    tiny_feedback,
    train_config,
)

from contextlm.api.aligned_model import Alignment
from contextlm.runtime.artifacts import revision_prefix
from contextlm.runtime.config import TrainConfig
from contextlm.runtime.losses import kto_ratio
from contextlm.runtime.revisions import Loader, read_manifest
from contextlm.runtime.store import LocalStore
from contextlm.runtime.train import (
    NoTrainingData,
    TrainingData,
    hyper_from_spec,
    train,
    training_rows,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.mark.parametrize("method", ["kto", "apo-zero", "apo-down", "dpo", "sft"])
def test_each_method_publishes_a_revision(method: str, tmp_path: Path, tiny_dir: Path) -> None:
    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback())
    result = train(train_config(tmp_path, tiny_dir, store, alignment={"method": method}), store)
    assert result["steps"] == 2 and result["method"] == method
    assert isinstance(result["trainLoss"], float)
    assert result["parent"] == "base" and result["adapterBase"] == "base" and not result["merged"]
    manifest = read_manifest(store, NS, MODEL, result["revision"])
    assert manifest.alignment_run == "run-1" and manifest.train_loss == result["trainLoss"]
    prefix = revision_prefix(NS, MODEL, result["revision"])
    adapter_config = json.loads(store.get_bytes(f"{prefix}/adapter/adapter_config.json"))
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert store.exists(f"{prefix}/adapter/adapter_model.safetensors")
    assert not any("merged/" in k for k in store.list(prefix + "/"))


def test_merged_weights_equal_base_plus_adapter(tmp_path: Path, tiny_dir: Path) -> None:
    import torch

    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback())
    result = train(train_config(tmp_path, tiny_dir, store, merge=True), store)
    assert result["merged"]
    loader = Loader(
        store, namespace=NS, model=MODEL, base_model=str(tiny_dir), cache_dir=tmp_path / "cache"
    )
    merged = loader.full_model(result["revision"]).eval()
    assert (loader.local(result["revision"], "merged") / "tokenizer.json").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(base, loader.local(result["revision"], "adapter")).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
        with adapted.disable_adapter():
            assert not torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_a_run_from_a_revision_continues_its_adapter(tmp_path: Path, tiny_dir: Path) -> None:
    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback())
    first = train(train_config(tmp_path, tiny_dir, store), store)
    publish_dataset(store, "run-2", tiny_feedback(14))
    second = train(
        train_config(tmp_path, tiny_dir, store, run="run-2", base_revision=first["revision"]), store
    )
    assert second["parent"] == first["revision"]
    assert second["adapterBase"] == "base" and not second["merged"]  # still base + one adapter
    assert second["revision"] != first["revision"]
    prefix = revision_prefix(NS, MODEL, second["revision"])
    saved = [k for k in store.list(prefix + "/adapter/")]
    assert not any("/ref/" in k for k in saved), saved  # TRL's frozen reference copy stays out


def test_a_changed_adapter_shape_merges_the_parent_first(tmp_path: Path, tiny_dir: Path) -> None:
    import torch

    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback())
    first = train(train_config(tmp_path, tiny_dir, store), store)
    publish_dataset(store, "run-2", tiny_feedback(14))
    second = train(
        train_config(
            tmp_path,
            tiny_dir,
            store,
            run="run-2",
            base_revision=first["revision"],
            alignment={"lora": {"r": 2, "alpha": 4}},
        ),
        store,
    )
    assert second["adapterBase"] == first["revision"] and second["merged"]
    loader = Loader(
        store, namespace=NS, model=MODEL, base_model=str(tiny_dir), cache_dir=tmp_path / "cache"
    )
    via_merged = loader.full_model(second["revision"]).eval()
    manifest = read_manifest(store, NS, MODEL, second["revision"])
    from peft import PeftModel

    chained = PeftModel.from_pretrained(
        loader.full_model(first["revision"]), loader.local(second["revision"], "adapter")
    ).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(via_merged(ids).logits, chained(ids).logits, atol=1e-5)
    assert manifest.parent == first["revision"]


def test_a_method_without_its_kind_of_feedback_has_no_training_data() -> None:
    thumbs = [{"prompt": "p", "completion": "c", "label": True}]
    with pytest.raises(NoTrainingData, match="correction"):
        training_rows("apo-zero", thumbs=thumbs, pairs=[])
    with pytest.raises(NoTrainingData, match="thumbs"):
        training_rows("kto", thumbs=[], pairs=[{"prompt": "p", "chosen": "a", "rejected": "b"}])
    sft = training_rows(
        "sft", thumbs=thumbs, pairs=[{"prompt": "p", "chosen": "a", "rejected": "b"}]
    )
    assert sft.rows == [{"prompt": "p", "completion": "a"}]


def test_unset_kto_weights_are_balanced_from_the_training_counts() -> None:
    data = TrainingData(rows=[{}] * 40, n_desirable=10, n_undesirable=30)
    hyper = hyper_from_spec(Alignment(), max_steps=None, data=data)
    assert hyper.desirable_weight == 3.0 and hyper.undesirable_weight == 1.0
    assert kto_ratio(n_desirable=10, n_undesirable=30, desirable=3.0, undesirable=1.0) == 1.0
    fixed = hyper_from_spec(
        Alignment(desirableWeight=1.0, undesirableWeight=1.0), max_steps=5, data=data
    )
    assert (fixed.desirable_weight, fixed.undesirable_weight, fixed.max_steps) == (1.0, 1.0, 5)


def run_cli(config: TrainConfig, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    path = tmp_path / "train.json"
    path.write_text(config.model_dump_json(by_alias=True))
    termination = tmp_path / "termination"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "contextlm.cli",
            "train",
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
    line = done.stdout.strip().splitlines()[-1]
    assert json.loads(termination.read_text()) == json.loads(line)
    return done.returncode, json.loads(line), done.stderr


def test_the_train_command_reports_progress_and_its_result(tmp_path: Path, tiny_dir: Path) -> None:
    store = LocalStore(tmp_path / "store")
    publish_dataset(store, "run-1", tiny_feedback())
    metrics = tmp_path / "train.prom"
    config = train_config(
        tmp_path,
        tiny_dir,
        store,
        metrics_file=str(metrics),
        alignment={"method": "apo-zero", "maxSteps": 3, "batchSize": 2},
    )
    code, result, log = run_cli(config, tmp_path)
    assert code == 0, log
    assert result["steps"] == 3 and result["revision"].startswith("r")
    assert "step 3/3" in log and "loss=" in log
    text = metrics.read_text()
    assert 'contextlm_train_step{method="apo-zero",model="assistant",run="run-1"} 3.0' in text
    assert "contextlm_train_loss{" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `e2e/cluster/build apt` (Debian's prometheus)"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_train_command_exits_2_without_training_data(tmp_path: Path, tiny_dir: Path) -> None:
    store = LocalStore(tmp_path / "store")
    thumbs_only = [r for r in tiny_feedback() if r.rating == "up"]
    publish_dataset(store, "run-1", thumbs_only)
    config = train_config(tmp_path, tiny_dir, store, alignment={"method": "dpo"})
    code, result, _ = run_cli(config, tmp_path)
    assert code == 2
    assert result["error"] == "NoTrainingData"
