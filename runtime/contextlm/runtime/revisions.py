"""Model revisions: what `contextlm train` writes and everything else loads.

A revision is immutable and lives under `revisions/<namespace>/<model>/<revision>/`:

    adapter/        PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)
    merged/         full weights + tokenizer, when asked for (TensorRT-LLM builds from them)
    manifest.json   written last; readers trust nothing without it

`adapterBase` in the manifest names the weights the adapter applies to. It is `base` (the
AlignedModel's base model) whenever possible: a run that starts from a revision keeps
training that revision's adapter (TRL keeps a frozen copy as the reference), so every
revision is "base + one adapter" and a server needs nothing but the base model and one
adapter directory. Only when the spec changed the adapter's shape is the parent merged
first; the new revision then names the parent as `adapterBase` and always carries
`merged/`.

The revision id is a hash of the adapter's bytes and its lineage, so two runs never
share an id and retrying the upload of one run rewrites identical content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .artifacts import content_hash, revision_prefix
from .store import ArtifactStore

log = logging.getLogger("contextlm.revisions")

BASE = "base"


class RevisionManifest(BaseModel):
    """manifest.json of a model revision."""

    revision: str
    namespace: str
    model: str
    base_model: str = Field(description="The AlignedModel's base model name.")
    parent: str = Field(description="Revision trained from (`base` for the base model).")
    adapter_base: str = Field(description="Weights the adapter applies to: base or a revision.")
    merged: bool = Field(description="Whether merged/ holds full weights.")
    method: str
    alignment_run: str | None = None
    lora: dict[str, Any] = Field(default_factory=dict)
    beta: float | None = None
    train_loss: float | None = None
    steps: int = 0
    dataset: dict[str, Any] = Field(default_factory=dict)
    created: str


def revision_id(adapter_dir: Path, *, parent: str, adapter_base: str, base_model: str) -> str:
    """Content hash of the adapter files plus lineage."""
    parts: list[str | bytes] = [base_model, parent, adapter_base]
    for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
        parts.append(path.relative_to(adapter_dir).as_posix())
        parts.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return "r" + content_hash(*parts, length=15)


def publish_revision(
    store: ArtifactStore, manifest: RevisionManifest, *, adapter_dir: Path, merged_dir: Path | None
) -> bool:
    """Upload adapter/ (and merged/), then the manifest; False if it was already there."""
    prefix = revision_prefix(manifest.namespace, manifest.model, manifest.revision)
    if store.manifest(prefix) is not None:
        return False
    store.upload_dir(f"{prefix}/adapter", adapter_dir)
    if merged_dir is not None:
        store.upload_dir(f"{prefix}/merged", merged_dir)
    store.publish(prefix, manifest.model_dump(mode="json"))
    return True


def read_manifest(
    store: ArtifactStore, namespace: str, model: str, revision: str
) -> RevisionManifest:
    found = store.manifest(revision_prefix(namespace, model, revision))
    if found is None:
        raise LookupError(f"revision {revision} of {namespace}/{model} is not published")
    return RevisionManifest.model_validate(found)


def fetch(store: ArtifactStore, prefix: str, target: Path) -> Path:
    """Download a store prefix once into `target` (marked complete only when whole)."""
    if (target / ".complete").exists():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=_parent(target)))
    try:
        store.download_dir(prefix, scratch)
        (scratch / ".complete").touch()
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def base_checkpoint(name: str, *, store: ArtifactStore | None, cache_dir: Path) -> Path:
    """A transformers checkpoint directory for the base model; GGUF weights (a packaged
    model) are de-quantized once into the cache, since transformers would redo it (tens
    of seconds) on every load. The generator, trainer and evaluator all load the base
    through here, so they share one converted copy per cache."""
    from .models import resolve_model_files

    files = resolve_model_files(name, store=store, cache_dir=cache_dir)
    if not files.gguf_file:
        return files.directory
    source = files.directory / files.gguf_file
    stat = source.stat()
    # "v2": copies written before the config carried `architectures` are not reused.
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:v2".encode())
    target = cache_dir / "gguf" / f"{source.stem}-{key.hexdigest()[:12]}"
    if (target / ".complete").exists():
        return target
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=_parent(target)))
    try:
        _dequantize_gguf(files.directory, files.gguf_file, scratch)
        (scratch / ".complete").touch()
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _dequantize_gguf(directory: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantizing %s once into %s", directory / gguf_file, out)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
    # A model loaded from GGUF is marked quantized and refuses save_pretrained, though its
    # weights are plain float tensors by now: rebuild it from its config without the mark.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # GGUF configs name no architecture; TRL (and others) build models from config.json.
    config.architectures = [type(loaded).__name__]
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


class Loader:
    """Loads revisions of one AlignedModel from the store, caching downloads locally."""

    def __init__(
        self,
        store: ArtifactStore | None,
        *,
        namespace: str,
        model: str,
        base_model: str,
        cache_dir: Path,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.model = model
        self.base_model = base_model
        self.cache_dir = cache_dir

    def base_dir(self) -> Path:
        return base_checkpoint(self.base_model, store=self.store, cache_dir=self.cache_dir)

    def manifest(self, revision: str) -> RevisionManifest | None:
        if revision == BASE:
            return None
        if self.store is None:
            raise LookupError(f"revision {revision} needs the artifact store")
        return read_manifest(self.store, self.namespace, self.model, revision)

    def local(self, revision: str, part: str) -> Path:
        """adapter/ or merged/ of a revision, downloaded once."""
        assert self.store is not None
        prefix = revision_prefix(self.namespace, self.model, revision)
        target = self.cache_dir / "revisions" / self.namespace / self.model / revision / part
        return fetch(self.store, f"{prefix}/{part}", target)

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.base_dir())
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def full_model(self, revision: str, *, dtype: Any = None) -> Any:
        """The revision's weights as a plain transformers model (adapters merged)."""
        from transformers import AutoModelForCausalLM

        manifest = self.manifest(revision)
        if manifest is None:
            return AutoModelForCausalLM.from_pretrained(self.base_dir(), dtype=dtype)
        if manifest.merged:
            return AutoModelForCausalLM.from_pretrained(self.local(revision, "merged"), dtype=dtype)
        from peft import PeftModel

        under = self.full_model(manifest.adapter_base, dtype=dtype)
        return PeftModel.from_pretrained(under, self.local(revision, "adapter")).merge_and_unload()

    def adapter_over_base(self, revision: str) -> Path | None:
        """The adapter directory when the revision is base + one adapter, else None."""
        manifest = self.manifest(revision)
        if manifest is None or manifest.adapter_base != BASE:
            return None
        return self.local(revision, "adapter")


def adapter_config(adapter_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((adapter_dir / "adapter_config.json").read_text())
    return loaded
