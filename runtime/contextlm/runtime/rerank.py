"""Cross-encoder reranking with transformers `AutoModelForSequenceClassification`.

A cross-encoder reads the query and a passage together, so it ranks better than the
bi-encoder that found the candidates but costs one forward pass per pair: it only sees
the fused top N. Scores follow sentence-transformers' CrossEncoder: a single-logit model
gives sigmoid(logit); a model with several labels gives the softmax probability of the
last label (the "relevant" class of the usual binary heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .embedding import pick_device


class CrossEncoder:
    """Scores (query, passage) pairs; thread-safe for inference."""

    def __init__(self, path: Path, *, device: str = "auto", max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.device = pick_device(device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        self.model: Any = (
            AutoModelForSequenceClassification.from_pretrained(str(path)).to(self.device).eval()
        )
        self.max_length = min(max_length, int(self.tokenizer.model_max_length))
        self._torch = torch

    def score(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32) -> list[float]:
        scores: list[float] = []
        with self._torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                batch = pairs[start : start + batch_size]
                inputs = self.tokenizer(
                    [q for q, _ in batch],
                    [p for _, p in batch],
                    padding=True,
                    truncation="longest_first",
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**inputs).logits.float()
                if logits.shape[-1] == 1:
                    probs = self._torch.sigmoid(logits[:, 0])
                else:
                    probs = self._torch.softmax(logits, dim=-1)[:, -1]
                scores += [float(x) for x in probs.cpu()]
        return scores
