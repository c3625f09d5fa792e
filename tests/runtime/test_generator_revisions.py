"""The generator serves a trained revision exactly as `contextlm train` published it.

Revisions are built here the way `contextlm train` lays them out (revisions.py): one is
base + a LoRA adapter, the next an adapter over that revision with merged weights. The
generator is given only the revision id and the AlignedModel, as the operator renders
it, and must load the same weights the evaluator scored (`revisions.Loader`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from generator_helpers import build_tiny_llama, run_generator, termination_reason

from contextlm.runtime.config import GeneratorConfig
from contextlm.runtime.generator_engine import load_engine
from contextlm.runtime.revisions import Loader, RevisionManifest, publish_revision, revision_id
from contextlm.runtime.store import LocalStore, StoreConfig

NS, MODEL = "team-a", "support"


def _random_adapter(under: Any, out: Path, seed: int) -> Path:
    """A LoRA adapter whose update is far from zero (PEFT's default init is a no-op)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(under, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    return out


def _publish(
    store: LocalStore, base: Path, adapter: Path, *, parent: str, merged: Path | None
) -> str:
    """Publish `adapter` as trained from `parent` (the adapter applies to the parent)."""
    adapter_base = parent
    rev = revision_id(adapter, parent=parent, adapter_base=adapter_base, base_model=str(base))
    manifest = RevisionManifest(
        revision=rev, namespace=NS, model=MODEL, base_model=str(base), parent=parent,
        adapter_base=adapter_base, merged=merged is not None, method="kto",
        created="2026-11-28T00:00:00Z",
    )  # fmt: skip
    assert publish_revision(store, manifest, adapter_dir=adapter, merged_dir=merged)
    return rev


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("revisions")
    base = build_tiny_llama(root / "base")
    store_config = StoreConfig(kind="local", path=str(root / "store"))
    store = LocalStore(root / "store")
    first_adapter = _random_adapter(AutoModelForCausalLM.from_pretrained(base), root / "a1", 1)
    first = _publish(store, base, first_adapter, parent="base", merged=None)
    loader = Loader(
        store, namespace=NS, model=MODEL, base_model=str(base), cache_dir=root / "cache"
    )
    # The second revision's adapter has another shape than the first's, so (as train does)
    # it applies to the first revision's merged weights and ships merged/ itself.
    second_adapter = _random_adapter(loader.full_model(first), root / "a2", 2)
    merged_dir = root / "merged2"
    from peft import PeftModel

    under = loader.full_model(first)
    PeftModel.from_pretrained(under, second_adapter).merge_and_unload().save_pretrained(merged_dir)
    second = _publish(store, base, second_adapter, parent=first, merged=merged_dir)
    return {"base": base, "store": store_config, "loader": loader, "first": first, "second": second}


def _logits(model: Any) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        out: torch.Tensor = model(ids).logits
    return out


def _engine(revisions: dict[str, Any], revision: str, tmp_path: Path) -> Any:
    config = GeneratorConfig(
        model=str(revisions["base"]), revision=revision, namespace=NS, aligned_model=MODEL,
        store=revisions["store"], cache_dir=str(tmp_path / "cache"), device="cpu",
    )  # fmt: skip
    return load_engine(config)


@pytest.mark.parametrize("which", ["first", "second"])
def test_a_revision_serves_the_weights_the_evaluator_scored(
    revisions: dict[str, Any], which: str, tmp_path: Path
) -> None:
    engine = _engine(revisions, revisions[which], tmp_path)
    expected = _logits(revisions["loader"].full_model(revisions[which]))
    base = _logits(revisions["loader"].full_model("base"))
    served = _logits(engine.model)
    assert torch.allclose(served, expected, atol=1e-5)
    assert not torch.allclose(served, base, atol=1e-2), "the adapter must change the model"


def test_base_with_an_aligned_model_serves_the_base(
    revisions: dict[str, Any], tmp_path: Path
) -> None:
    engine = _engine(revisions, "base", tmp_path)
    assert torch.allclose(_logits(engine.model), _logits(revisions["loader"].full_model("base")))


def test_a_revision_that_was_never_published_ends_the_generator_with_a_reason(
    revisions: dict[str, Any],
) -> None:
    with run_generator(
        revisions["base"], revision="r000000000000000", namespace=NS, aligned_model=MODEL,
        store=revisions["store"].model_dump(),
    ) as server:  # fmt: skip
        assert server.process.wait(timeout=300) != 0
        reason = termination_reason(server)
    assert reason["error"] == "LookupError"
    assert "r000000000000000" in reason["reason"] and "not published" in reason["reason"]
