"""The preference arithmetic shared by `contextlm train` and `contextlm evaluate`.

The losses themselves are TRL's (`KTOTrainer`, `DPOTrainer`); what lives here is what TRL
does not expose as a function: completion log-probabilities computed exactly the way TRL
tokenizes a (prompt, completion) example, the implicit reward of a policy against a
reference, the held-out scores the promotion gate compares, and the KTO class weights
TRL recommends but leaves to the caller.

Definitions (docs/alignment.md explains them for users):

* log π(y|x): the sum of the log-probabilities of the completion tokens of y after the
  prompt x, with the EOS token appended when y lacks it (as TRL trains), truncated to
  `max_length` tokens from the right (as TRL's collators do).
* implicit reward r(x, y) = β · (log π(y|x) − log π_ref(y|x)) (Rafailov et al. 2023).
* preference accuracy: how often the policy ranks what users preferred above what they
  did not, scored 1 for a right ranking, 0 for a wrong one and ½ for a tie (rewards closer
  than `TIE`), so a policy identical to its reference scores exactly 0.5:
  - a correction pair is ranked right when r(x, chosen) > r(x, rejected);
  - thumbs rows are unpaired, so every (thumbs-up row, thumbs-down row) combination of the
    held-out split is a comparison, ranked right when the thumbs-up row's reward is the
    higher: the area under the ROC curve of the reward as a predictor of the rating. It
    is the pairwise reading of "ranks the desirable completion above the undesirable" and,
    unlike the sign of r against the label (reported as `thumbsSignAccuracy`), it does not
    move when training shifts every reward the same way: a run that learns only the answer
    format lifts every reward above 0, and its sign accuracy then equals the held-out
    share of thumbs-up (measured: 0.58 on shuffled ratings, against 0.55 for the ranking).
    With one class missing from the split, the sign accuracy stands in;
  - the two kinds are averaged weighted by their number of items (pairs, thumbs rows).
* reward margin: pairs contribute r(chosen) − r(rejected); thumbs rows contribute the mean
  reward of thumbs-up rows minus that of thumbs-down rows; the two are averaged weighted by
  how many items each has.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Rewards closer than this are a tie: float32 sums of a few hundred log-probs differ in
# the last bits between two forward passes of the same weights.
TIE = 1e-4
# TRL's recommended range for desirable_weight·n_desirable / (undesirable_weight·n_undesirable),
# Eq. (8) of Ethayarajh et al. 2024 (https://arxiv.org/abs/2402.01306).
KTO_RATIO_RANGE = (1.0, 4.0 / 3.0)


@dataclass(frozen=True)
class Tokenized:
    """One example as TRL trains on it: the prompt ids and the completion ids after them."""

    prompt_ids: list[int]
    completion_ids: list[int]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_example(tokenizer: Any, prompt: str, completion: str) -> Tokenized:
    """Tokenize like TRL's preference trainers do for plain-text examples: EOS appended to
    the completion, prompt and prompt+completion tokenized separately, and the completion
    starting where the two diverge (tokens may merge across the boundary)."""
    eos = tokenizer.eos_token or ""
    if eos and not completion.endswith(eos):
        completion += eos
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    full_ids = list(tokenizer(prompt + completion)["input_ids"])
    start = common_prefix_length(prompt_ids, full_ids)
    return Tokenized(prompt_ids[:start], full_ids[start:])


def _batches(items: Sequence[Tokenized], size: int) -> Iterator[Sequence[Tokenized]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def completion_logps(
    model: Any,
    examples: Sequence[Tokenized],
    *,
    pad_token_id: int,
    max_length: int | None = None,
    batch_size: int = 8,
) -> list[float]:
    """log π(y|x) for each example: summed log-probabilities of its completion tokens."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for batch in _batches(examples, batch_size):
            ids, mask, completion = _pad(batch, pad_token_id=pad_token_id, max_length=max_length)
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits
            out.extend(_sum_logps(logits.float(), ids.to(device), completion.to(device)))
    return out


def _pad(
    batch: Sequence[Tokenized], *, pad_token_id: int, max_length: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and completion mask."""
    import torch

    rows = []
    for item in batch:
        ids = item.prompt_ids + item.completion_ids
        flags = [0] * len(item.prompt_ids) + [1] * len(item.completion_ids)
        if max_length is not None:
            ids, flags = ids[:max_length], flags[:max_length]
        rows.append((ids, flags))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, flags) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        completion[i, : len(flags)] = torch.tensor(flags)
    return input_ids, attention, completion


def _sum_logps(logits: torch.Tensor, ids: torch.Tensor, completion: torch.Tensor) -> list[float]:
    """Token t is predicted by the logits at t-1; sum over completion tokens only."""
    import torch

    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = ids[:, 1:]
    token = torch.gather(logps, 2, targets.unsqueeze(-1)).squeeze(-1)
    summed = (token * completion[:, 1:]).sum(dim=1)
    return [float(x) for x in summed.cpu()]


def implicit_rewards(
    policy: Sequence[float], reference: Sequence[float], beta: float
) -> list[float]:
    """r = β · (log π − log π_ref), item by item."""
    return [beta * (p - r) for p, r in zip(policy, reference, strict=True)]


def _score(difference: float) -> float:
    if abs(difference) < TIE:
        return 0.5
    return 1.0 if difference > 0 else 0.0


@dataclass(frozen=True)
class PreferenceScores:
    """Held-out scores of one policy against one reference (definitions above)."""

    preference_accuracy: float
    reward_margin: float
    pair_accuracy: float | None  # pairs only
    thumbs_accuracy: float | None  # thumbs rows only: the ranking (AUC) reading
    thumbs_sign_accuracy: float | None  # thumbs rows only: sign of r against the label
    pairs: int
    thumbs: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "preferenceAccuracy": self.preference_accuracy,
            "rewardMargin": self.reward_margin,
            "pairAccuracy": self.pair_accuracy,
            "thumbsAccuracy": self.thumbs_accuracy,
            "thumbsSignAccuracy": self.thumbs_sign_accuracy,
            "pairs": self.pairs,
            "thumbs": self.thumbs,
        }


def ranking_accuracy(up: Sequence[float], down: Sequence[float]) -> float:
    """The share of (up, down) combinations with the up reward higher, ties ½ (AUC)."""
    ordered = sorted(down)
    total = 0.0
    for reward in up:
        # down rewards clearly below, and those within TIE of this one (ties)
        below = bisect.bisect_left(ordered, reward - TIE)
        tied = bisect.bisect_right(ordered, reward + TIE) - below
        total += below + 0.5 * tied
    return total / (len(up) * len(down))


def preference_scores(
    *,
    thumbs_rewards: Sequence[float],
    thumbs_labels: Sequence[bool],
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
) -> PreferenceScores:
    """Preference accuracy and reward margin over held-out thumbs rows and pairs."""
    pair_scores = [_score(c - r) for c, r in zip(chosen_rewards, rejected_rewards, strict=True)]
    sign_scores = [
        _score(r if label else -r) for r, label in zip(thumbs_rewards, thumbs_labels, strict=True)
    ]
    n_pairs, n_thumbs = len(pair_scores), len(sign_scores)
    if n_pairs + n_thumbs == 0:
        raise ValueError("no held-out items to score")
    up = [r for r, label in zip(thumbs_rewards, thumbs_labels, strict=True) if label]
    down = [r for r, label in zip(thumbs_rewards, thumbs_labels, strict=True) if not label]
    thumbs_accuracy = ranking_accuracy(up, down) if up and down else _mean(sign_scores)
    accuracy = (sum(pair_scores) + (thumbs_accuracy or 0.0) * n_thumbs) / (n_pairs + n_thumbs)
    pair_margin = _mean([c - r for c, r in zip(chosen_rewards, rejected_rewards, strict=True)])
    # A class missing from the held-out rows contributes its side as 0 (the reference's).
    thumbs_margin = (_mean(up) or 0.0) - (_mean(down) or 0.0) if n_thumbs else None
    margin = ((pair_margin or 0.0) * n_pairs + (thumbs_margin or 0.0) * n_thumbs) / (
        n_pairs + n_thumbs
    )
    return PreferenceScores(
        preference_accuracy=accuracy,
        reward_margin=margin,
        pair_accuracy=_mean(pair_scores),
        thumbs_accuracy=thumbs_accuracy,
        thumbs_sign_accuracy=_mean(sign_scores),
        pairs=n_pairs,
        thumbs=n_thumbs,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def kto_weights(
    *,
    n_desirable: int,
    n_undesirable: int,
    desirable: float | None,
    undesirable: float | None,
) -> tuple[float, float]:
    """KTO's (desirable_weight, undesirable_weight).

    TRL recommends desirable_weight·n_desirable / (undesirable_weight·n_undesirable) in
    [1, 4/3] and warns when it is not; a weight the spec leaves unset is chosen to put the
    ratio at 1 (classes balanced), up-weighting the minority class rather than shrinking
    the majority so the learning rate keeps its meaning. A weight the spec sets is kept.
    """
    n_d, n_u = max(n_desirable, 1), max(n_undesirable, 1)
    if desirable is not None and undesirable is not None:
        return desirable, undesirable
    if desirable is not None:
        return desirable, desirable * n_d / n_u
    if undesirable is not None:
        return undesirable * n_u / n_d, undesirable
    if n_d >= n_u:
        return 1.0, n_d / n_u
    return n_u / n_d, 1.0


def kto_ratio(
    *, n_desirable: int, n_undesirable: int, desirable: float, undesirable: float
) -> float:
    """The ratio TRL checks against KTO_RATIO_RANGE."""
    return desirable * max(n_desirable, 1) / (undesirable * max(n_undesirable, 1))


def finite(value: float) -> float | None:
    """JSON has no NaN: report a non-finite loss as null."""
    return value if math.isfinite(value) else None
