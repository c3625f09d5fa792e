"""`contextlm evaluate`: score a candidate revision against the serving one, then gate.

Both revisions are scored on the same items:

(a) Held-out feedback (the export's held-out split): each thumbs row and each correction
    pair is scored by the implicit reward r = β·(log π(y|x) − log π_ref(y|x)) of the
    revision, with π_ref the reference revision (by default the candidate's parent, which
    is the serving revision the run started from). `preferenceAccuracy` and
    `rewardMargin` are defined in `losses`; in short, a pair counts when the correction
    out-rewards the original answer, a thumbs row when its reward has the rating's sign,
    ties count half. A revision equal to the reference has r ≡ 0, hence accuracy 0.5 and
    margin 0: the gate then asks the candidate to express the users' preference beyond
    chance by at least `minImprovement`.

(b) The evaluation set, when the spec names one (JSON lines of {question,
    referenceAnswer?, relevantDocIds?}): each question is retrieved once from the
    RetrievalStack's retriever, the prompt is built exactly as the gateway builds it, and
    each revision answers greedily.
    * `retrievalRecall`: relevant document ids found among the top-k retrieved, averaged
      over questions that list some. It does not depend on the model, so it is the same
      for both revisions; it is reported to tell a retrieval problem from a model one.
    * `citationCorrectness`: per answer, the share of its [n] markers that name a chunk
      of the prompt whose text supports the sentence carrying the marker (at least half
      of that sentence's content words occur in the chunk); an answer with no citation
      scores 0.
    * `answerOverlap`: SQuAD-style token F1 between the answer and the reference answer.

The gate promotes iff candidate − baseline ≥ minImprovement on the spec's metric; a
metric that cannot be computed (no held-out rows, no evaluation set) rejects. The full
report goes to `alignment/<ns>/<model>/runs/<run>/evaluation.json`; the result line is
the AlignmentRun's `status.gate` plus the scores.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import re
import string
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .artifacts import run_prefix
from .feedback.export import dataset_prefix, read_jsonl, report
from .losses import (
    Tokenized,
    completion_logps,
    implicit_rewards,
    preference_scores,
    tokenize_example,
)
from .revisions import BASE, Loader

if TYPE_CHECKING:
    from .config import EvaluateConfig
    from .prompting import ContextChunk
    from .store import ArtifactStore

log = logging.getLogger("contextlm.evaluate")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
METRIC_KEYS = {
    "preference-accuracy": "preferenceAccuracy",
    "reward-margin": "rewardMargin",
    "answer-overlap": "answerOverlap",
    "citation-correctness": "citationCorrectness",
    "retrieval-recall": "retrievalRecall",
}
# Differences this small are float noise, not a shortfall: 0.51 − 0.50 passes 0.01.
GATE_EPSILON = 1e-9
SUPPORT_THRESHOLD = 0.5
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "which",
        "who",
        "what",
        "when",
        "where",
        "how",
        "not",
        "no",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "can",
        "will",
        "would",
        "should",
        "may",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "them",
        "his",
        "her",
        "our",
        "their",
        "your",
        "than",
        "then",
        "there",
        "so",
        "into",
    }
)


# Text metrics ------------------------------------------------------------------------


def normalize_words(text: str) -> list[str]:
    """SQuAD's answer normalisation, plus citation markers removed."""
    text = re.sub(r"\[\d[\d,;\s]*\]", " ", text.lower())
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return [w for w in text.split() if w not in ("a", "an", "the")]


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_words(prediction), normalize_words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def content_words(text: str) -> set[str]:
    return {w for w in normalize_words(text) if w not in STOPWORDS}


def cited_sentences(answer: str) -> list[tuple[int, str]]:
    """(n, the sentence carrying [n]) for every marker in the answer."""
    from .citations import MARKER

    out: list[tuple[int, str]] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", answer):
        for match in MARKER.finditer(sentence):
            for part in re.split(r"[,;]", match.group(1)):
                out.append((int(part.strip()), sentence))
    return out


def citation_correctness(answer: str, chunks: Sequence[ContextChunk]) -> float:
    cited = cited_sentences(answer)
    if not cited:
        return 0.0
    good = 0
    for n, sentence in cited:
        if not 1 <= n <= len(chunks):
            continue
        words = content_words(sentence)
        if (
            words
            and len(words & content_words(chunks[n - 1].text)) / len(words) >= SUPPORT_THRESHOLD
        ):
            good += 1
    return good / len(cited)


def recall_at_k(relevant: Sequence[str], retrieved_docs: Sequence[str]) -> float:
    wanted = set(relevant)
    return len(wanted & set(retrieved_docs)) / len(wanted)


# Evaluation set ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    question: str
    reference_answer: str | None = None
    relevant_doc_ids: tuple[str, ...] = ()
    id: str = ""


def load_evaluation_set(path: str) -> list[EvalItem]:
    """JSON lines (or one JSON array) in a file, or every *.json/*.jsonl file of a
    directory (a mounted ConfigMap)."""
    source = Path(path)
    files = (
        sorted(p for p in source.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if source.is_dir()
        else [source]
    )
    items: list[EvalItem] = []
    for file in files:
        text = file.read_text().strip()
        records = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
        items.extend(_item(r, f"{file.name}:{i}") for i, r in enumerate(records))
    return items


def _item(record: dict[str, Any], default_id: str) -> EvalItem:
    def pick(*names: str) -> Any:
        return next((record[n] for n in names if record.get(n) is not None), None)

    question = pick("question", "query")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"evaluation item {default_id} has no question")
    relevant = pick("relevantDocIds", "relevant_doc_ids") or []
    return EvalItem(
        question=question,
        reference_answer=pick("referenceAnswer", "reference_answer", "answer"),
        relevant_doc_ids=tuple(str(d) for d in relevant),
        id=str(pick("id") or default_id),
    )


Retrieve = Callable[[str, int | None], list["ContextChunk"]]


def http_retriever(url: str, *, timeout: float = 60.0) -> Retrieve:
    from .prompting import ContextChunk

    def retrieve(question: str, top_k: int | None) -> list[ContextChunk]:
        body: dict[str, Any] = {"query": question}
        if top_k is not None:
            body["topK"] = top_k
        request = urllib.request.Request(
            f"{url.rstrip('/')}/v1/retrieve",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        return [ContextChunk.from_retriever(r) for r in payload.get("results", [])]

    return retrieve


# Models ------------------------------------------------------------------------------


class Revisions:
    """The revisions being compared, on one set of base weights where possible: every
    "base + one adapter" revision is a named adapter of one PeftModel; a revision with
    merged weights only is loaded on its own when asked for."""

    def __init__(self, loader: Loader, revisions: Sequence[str], *, device: str) -> None:
        from transformers import AutoModelForCausalLM

        self.loader = loader
        self.device = device
        self.model: Any = cast(Any, AutoModelForCausalLM.from_pretrained(loader.base_dir()))
        self.model.to(device).eval()
        self.adapters: set[str] = set()
        self.separate: set[str] = set()
        for revision in dict.fromkeys(revisions):
            if revision == BASE:
                continue
            adapter = loader.adapter_over_base(revision)
            if adapter is None:
                self.separate.add(revision)
            else:
                self._add_adapter(revision, adapter)

    def _add_adapter(self, name: str, directory: Path) -> None:
        from peft import PeftModel

        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, directory, adapter_name=name)
            self.model.to(self.device).eval()
        else:
            self.model.load_adapter(directory, adapter_name=name)
            self.model.to(self.device)
        self.adapters.add(name)

    @contextlib.contextmanager
    def use(self, revision: str) -> Iterator[Any]:
        if revision in self.separate:
            model = self.loader.full_model(revision).to(self.device).eval()
            try:
                yield model
            finally:
                del model
        elif revision == BASE:
            if self.adapters:
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
        else:
            self.model.set_adapter(revision)
            yield self.model


# Scoring -----------------------------------------------------------------------------


@dataclass
class HeldOut:
    thumbs: list[Tokenized] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    chosen: list[Tokenized] = field(default_factory=list)
    rejected: list[Tokenized] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.thumbs) + len(self.chosen)

    def sequences(self) -> list[Tokenized]:
        return self.thumbs + self.chosen + self.rejected


def held_out(store: ArtifactStore, prefix: str, tokenizer: Any, *, limit: int) -> HeldOut:
    """The held-out split, tokenized as training tokenizes; at most `limit` items, the
    first in export order (which is stable for a dataset)."""
    out = HeldOut()
    for row in read_jsonl(store, f"{prefix}/pairs-heldout.jsonl")[:limit]:
        out.chosen.append(tokenize_example(tokenizer, row["prompt"], row["chosen"]))
        out.rejected.append(tokenize_example(tokenizer, row["prompt"], row["rejected"]))
    for row in read_jsonl(store, f"{prefix}/kto-heldout.jsonl")[: max(0, limit - len(out.chosen))]:
        out.thumbs.append(tokenize_example(tokenizer, row["prompt"], row["completion"]))
        out.labels.append(bool(row["label"]))
    return out


def score_held_out(
    revisions: Revisions,
    data: HeldOut,
    *,
    names: dict[str, str],
    reference: str,
    beta: float,
    pad_token_id: int,
    max_length: int,
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """Preference scores of each named revision against `reference` on the same items."""
    sequences = data.sequences()
    logps: dict[str, list[float]] = {}
    for revision in dict.fromkeys([reference, *names.values()]):
        with revisions.use(revision) as model:
            logps[revision] = completion_logps(
                model,
                sequences,
                pad_token_id=pad_token_id,
                max_length=max_length,
                batch_size=batch_size,
            )
    n_t, n_p = len(data.thumbs), len(data.chosen)
    out: dict[str, dict[str, Any]] = {}
    for role, revision in names.items():
        rewards = implicit_rewards(logps[revision], logps[reference], beta)
        scores = preference_scores(
            thumbs_rewards=rewards[:n_t],
            thumbs_labels=data.labels,
            chosen_rewards=rewards[n_t : n_t + n_p],
            rejected_rewards=rewards[n_t + n_p :],
        )
        out[role] = scores.as_dict()
        if n_p:
            # The likelihood view of the same pairs, with no reference involved: how much
            # more likely the correction is than the original answer, per pair.
            gaps = [
                c - r
                for c, r in zip(
                    logps[revision][n_t : n_t + n_p], logps[revision][n_t + n_p :], strict=True
                )
            ]
            out[role]["pairLogpGap"] = sum(gaps) / len(gaps)
    return out


def score_evaluation_set(
    revisions: Revisions,
    items: Sequence[EvalItem],
    *,
    names: dict[str, str],
    retrieve: Retrieve,
    config: EvaluateConfig,
    tokenizer: Any,
) -> dict[str, dict[str, Any]]:
    from .prompting import HFTokenizer, build_prompt

    prompt_tokenizer = HFTokenizer(tokenizer, chat_template=config.chat_template)
    prompts, recalls = [], []
    for item in items:
        chunks = retrieve(item.question, config.top_k)
        if item.relevant_doc_ids:
            recalls.append(recall_at_k(item.relevant_doc_ids, [c.doc_id for c in chunks]))
        prompts.append(
            build_prompt(
                config.prompt, question=item.question, chunks=chunks, tokenizer=prompt_tokenizer
            )
        )
    out: dict[str, dict[str, Any]] = {}
    for role, revision in names.items():
        with revisions.use(revision) as model:
            answers = [
                generate(model, tokenizer, p.text, max_new_tokens=config.max_new_tokens)
                for p in prompts
            ]
        overlaps = [
            token_f1(a, item.reference_answer)
            for a, item in zip(answers, items, strict=True)
            if item.reference_answer
        ]
        out[role] = {
            "retrievalRecall": _mean(recalls),
            "citationCorrectness": _mean(
                [citation_correctness(a, p.chunks) for a, p in zip(answers, prompts, strict=True)]
            ),
            "answerOverlap": _mean(overlaps),
            "questions": len(items),
        }
    return out


def generate(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        output = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    text: str = tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.strip()


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# The gate ----------------------------------------------------------------------------


def gate(
    metric: str, scores: dict[str, dict[str, Any]], *, min_improvement: float
) -> dict[str, Any]:
    """Promote iff candidate − baseline ≥ minImprovement on `metric`."""
    key = METRIC_KEYS[metric]
    candidate = scores.get("candidate", {}).get(key)
    baseline = scores.get("baseline", {}).get(key)
    decision: dict[str, Any] = {"metric": metric, "minImprovement": min_improvement}
    if candidate is None or baseline is None:
        return {
            **decision,
            "candidateScore": 0.0,
            "baselineScore": 0.0,
            "decision": "Reject",
            "reason": f"{metric} could not be scored: no held-out feedback or evaluation set for it",
        }
    # Decide on the scores as recorded, so the decision can be checked from the record.
    candidate, baseline = round(candidate, 6), round(baseline, 6)
    passed = candidate - baseline >= min_improvement - GATE_EPSILON
    return {
        **decision,
        "candidateScore": candidate,
        "baselineScore": baseline,
        "decision": "Promote" if passed else "Reject",
    }


def evaluate(
    config: EvaluateConfig, store: ArtifactStore, *, retrieve: Retrieve | None = None
) -> dict[str, Any]:
    import torch

    from .train import pick_device

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    loader = Loader(
        store,
        namespace=config.namespace,
        model=config.model,
        base_model=config.base_model,
        cache_dir=Path(config.cache_dir).expanduser(),
    )
    candidate_manifest = loader.manifest(config.candidate_revision)
    reference = config.reference_revision or (
        candidate_manifest.parent if candidate_manifest else BASE
    )
    names = {"candidate": config.candidate_revision, "baseline": config.baseline_revision}
    tokenizer = loader.tokenizer()
    revisions = Revisions(loader, [reference, *names.values()], device=pick_device(config.device))
    prefix = config.dataset_prefix or dataset_prefix(config.namespace, config.model, config.run)
    data = held_out(store, prefix, tokenizer, limit=config.max_held_out)
    scores: dict[str, dict[str, Any]] = {role: {} for role in names}
    if data.size:
        held = score_held_out(
            revisions,
            data,
            names=names,
            reference=reference,
            beta=config.alignment.beta,
            pad_token_id=tokenizer.pad_token_id,
            max_length=config.max_length,
            batch_size=config.batch_size,
        )
        for role in names:
            scores[role].update(held[role])
    if config.evaluation_set:
        if retrieve is None:
            if not config.retriever_url:
                raise ValueError("an evaluation set needs retrieverUrl")
            retrieve = http_retriever(config.retriever_url)
        items = load_evaluation_set(config.evaluation_set)
        evaluated = score_evaluation_set(
            revisions, items, names=names, retrieve=retrieve, config=config, tokenizer=tokenizer
        )
        for role in names:
            scores[role].update(evaluated[role])
    evaluation = config.alignment.evaluation
    decision = gate(evaluation.metric, scores, min_improvement=evaluation.min_improvement)
    result = {
        **decision,
        "candidateRevision": config.candidate_revision,
        "baselineRevision": config.baseline_revision,
        "referenceRevision": reference,
        "scores": {role: _rounded(s) for role, s in scores.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    store.put_bytes(
        f"{run_prefix(config.namespace, config.model, config.run)}/evaluation.json",
        json.dumps(result, indent=2).encode(),
    )
    log.info("gate %s: %s", decision["decision"], json.dumps(decision))
    return result


def _rounded(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()}


# Process ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from .config import EvaluateConfig, load_config
    from .models import ModelNotFound
    from .store import StoreError, open_store

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    termination_log = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    config = load_config(EvaluateConfig, args.config)
    try:
        result = evaluate(config, open_store(config.store))
    except (ModelNotFound, LookupError) as exc:
        log.error("%s", exc)
        return report({"error": type(exc).__name__, "reason": str(exc)}, termination_log, 2)
    except (StoreError, OSError, RuntimeError, ValueError) as exc:
        log.exception("evaluation failed")
        return report({"error": type(exc).__name__, "reason": str(exc)[:2000]}, termination_log, 1)
    return report(result, termination_log, 0)
