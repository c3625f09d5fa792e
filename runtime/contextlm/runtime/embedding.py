"""Sentence embeddings with plain transformers, computed the way sentence-transformers does
for mean-pooled models such as all-MiniLM-L6-v2 (token embeddings averaged under the
attention mask, then L2-normalised), so vectors match the published model exactly while
the runtime stays free of sentence-transformers and its training stack.

Texts are tokenised once, ordered by token length and padded per batch: a batch of
similar lengths wastes little compute on padding, which is most of the speed-up over a
naive loop.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .artifacts import content_hash

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FINGERPRINT_FILES = ("config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json")


def passive_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin; call before torch or faiss loads.

    Both bring an OpenMP runtime whose idle threads by default busy-wait for the next
    parallel region. On a shared node or under a CPU limit the spinning threads starve
    the ones doing work: on a loaded 2-core machine one query embedding took 1.4 s with
    spinning and 34-64 ms without. An explicit OMP_WAIT_POLICY is left alone."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pick_device(requested: str) -> str:
    """`auto` means CUDA when a GPU is visible, else CPU; `cuda` without a GPU is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but no CUDA device is visible")
    return requested


def model_fingerprint(path: Path) -> str:
    """A content hash of the files that decide a model's outputs: embeddings are reused
    across index versions only while this stays the same, so a model replaced in the
    store under the same name never mixes old and new vectors."""
    parts: list[bytes] = []
    for name in (*FINGERPRINT_FILES, *WEIGHT_FILES):
        file = path / name
        if file.is_file():
            parts += [name.encode(), file.read_bytes()]
    if not parts:
        raise FileNotFoundError(f"{path} holds no model files")
    return content_hash(*parts)


def pooling_mode(path: Path) -> str:
    """`mean` or `cls`, from the sentence-transformers pooling config when there is one."""
    config = path / "1_Pooling" / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def max_seq_length(path: Path, fallback: int = 512) -> int:
    """The model's sequence limit as sentence-transformers applies it (256 for MiniLM)."""
    config = path / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return fallback


class Embedder:
    """A transformers encoder with pooling and normalisation; thread-safe for inference."""

    def __init__(self, path: Path, *, device: str = "auto") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.device = pick_device(device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        self.model: Any = AutoModel.from_pretrained(str(path)).to(self.device).eval()
        self.pooling = pooling_mode(path)
        self.max_length = min(max_seq_length(path), int(self.tokenizer.model_max_length))
        self.dimension = int(self.model.config.hidden_size)
        self._torch = torch

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Vectors:
        """Unit-length float32 vectors, one row per text, in the order given;
        `progress(done, total)` is called after each batch."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        limit = min(max_length or self.max_length, self.max_length)
        ids: list[list[int]] = self.tokenizer(
            list(texts), truncation=True, max_length=limit, add_special_tokens=True
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        with self._torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._forward([ids[i] for i in rows])
                if progress is not None:
                    progress(start + len(rows), len(order))
        return out

    def _forward(self, batch: list[list[int]]) -> Vectors:
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in padded.items()}
        hidden: torch.Tensor = self.model(**inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = self._torch.nn.functional.normalize(pooled, p=2, dim=1)
        result: Vectors = pooled.float().cpu().numpy()
        return result
