"""The losses TRL trains with equal the published formulas, on fixed log-probabilities.

TRL 1.x no longer exposes `kto_loss` / `dpo_loss` functions: the per-example losses are
computed inside `KTOTrainer._compute_loss` and `DPOTrainer._compute_loss`. These tests
drive those methods of real trainers with a *stand-in policy* (named `FixedLogps`): a
module that returns fixed per-token log-probabilities for each sequence instead of
running a network, while the reference log-probabilities come in the batch
(`precompute_ref_log_probs`). The expected values are computed here independently, with
`math`, from the papers:

* KTO, Ethayarajh et al. 2024 (arXiv:2402.01306), Eq. (7) as TRL implements it:
  z0 = max(0, mean over the batch of log π(y'|x) − log π_ref(y'|x)) for the mismatched
  (x, y') pairs, and loss λ_D(1 − σ(β(r − z0))) for desirable, λ_U(1 − σ(β(z0 − r))) for
  undesirable rows, with r = log π(y|x) − log π_ref(y|x).
* APO, D'Oosterlinck et al. 2024 (arXiv:2408.06266), Eq. (7) (zero) and (8) (down):
  zero: 1 − σ(β r_c) + σ(β r_r);  down: σ(β r_c) + 1 − σ(β(r_c − r_r)).
* DPO, Rafailov et al. 2023: −log σ(β(r_c − r_r)).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from alignment_support import tiny_model_and_tokenizer

from contextlm.runtime.losses import (
    TIE,
    completion_logps,
    implicit_rewards,
    kto_ratio,
    kto_weights,
    preference_scores,
    ranking_accuracy,
    tokenize_example,
)

BETA = 0.3


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Independent reference formulas --------------------------------------------------------


def kto_reference(
    *,
    logps: list[float],
    ref_logps: list[float],
    labels: list[bool],
    kl_logps: list[float],
    ref_kl_logps: list[float],
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> tuple[list[float], float]:
    """Per-example KTO losses (desirable ones first, as TRL concatenates them) and z0."""
    z0 = max(0.0, sum(k - r for k, r in zip(kl_logps, ref_kl_logps)) / len(kl_logps))
    desirable, undesirable = [], []
    for lp, ref, label in zip(logps, ref_logps, labels):
        reward = lp - ref
        if label:
            desirable.append(desirable_weight * (1 - sigmoid(beta * (reward - z0))))
        else:
            undesirable.append(undesirable_weight * (1 - sigmoid(beta * (z0 - reward))))
    return desirable + undesirable, z0


def paired_reference(loss_type: str, *, rc: float, rr: float, beta: float) -> float:
    if loss_type == "apo_zero":
        return (1 - sigmoid(beta * rc)) + sigmoid(beta * rr)
    if loss_type == "apo_down":
        return sigmoid(beta * rc) + (1 - sigmoid(beta * (rc - rr)))
    if loss_type == "sigmoid":
        return -math.log(sigmoid(beta * (rc - rr)))
    raise AssertionError(loss_type)


# The stand-in policy -------------------------------------------------------------------


class FixedLogps(torch.nn.Module):
    """Stand-in for the policy network: each sequence is identified by its first token
    and gets a fixed total log-probability, spread over its completion tokens (TRL's
    fused LM head returns 0 where labels are -100, so the rest of the row is 0)."""

    def __init__(self, totals: dict[int, float]) -> None:
        super().__init__()
        self.totals = totals
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # TRL reads a device from it

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: Any) -> SimpleNamespace:
        shifted = labels[:, 1:]
        mask = (shifted != -100).float()
        per_token = torch.zeros(shifted.shape)
        for i, row in enumerate(input_ids):
            per_token[i] = mask[i] * self.totals[int(row[0])] / mask[i].sum()
        per_token = per_token + 0 * self.anchor
        zeros = torch.zeros(shifted.shape)
        return SimpleNamespace(
            log_probs=per_token,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros(shifted.shape, dtype=torch.bool),
        )


def sequences(
    first_tokens: list[int], *, prompt: int = 3, completion: int = 2
) -> dict[str, torch.Tensor]:
    """Right-padded sequences starting with the given ids (prompt, then completion)."""
    n = len(first_tokens)
    ids = torch.full((n, prompt + completion), 5, dtype=torch.long)
    ids[:, 0] = torch.tensor(first_tokens)
    completion_mask = torch.zeros_like(ids)
    completion_mask[:, prompt:] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_mask": completion_mask,
    }


# Trainers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_model_and_tokenizer()


def kto_trainer(tiny: tuple[Any, Any], tmp_path: Any, **overrides: Any) -> Any:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    model, tokenizer = tiny
    args = KTOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        beta=BETA,
        use_cpu=True,
        bf16=False,
        report_to=[],
        activation_checkpointing=False,
        **overrides,
    )
    rows = [
        {"prompt": "a b", "completion": " c", "label": True},
        {"prompt": "b c", "completion": " a", "label": False},
    ]
    trainer = KTOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.precompute_ref_logps = True  # reference log-probs come in the batch
    return trainer


def dpo_trainer(tiny: tuple[Any, Any], tmp_path: Any, loss_type: str) -> Any:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        beta=BETA,
        loss_type=[loss_type],
        use_cpu=True,
        bf16=False,
        report_to=[],
        activation_checkpointing=False,
    )
    rows = [{"prompt": "a b", "chosen": " c", "rejected": " a"}]
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.precompute_ref_logps = True
    return trainer


def kto_batch(
    logps: list[float], ref: list[float], labels: list[bool], kl: list[float], ref_kl: list[float]
) -> tuple[FixedLogps, dict[str, torch.Tensor]]:
    n = len(logps)
    main_ids = list(range(10, 10 + n))
    kl_ids = list(range(30, 30 + n))
    totals = {**dict(zip(main_ids, logps)), **dict(zip(kl_ids, kl))}
    main, mismatched = sequences(main_ids), sequences(kl_ids, completion=3)
    batch = {
        **main,
        "KL_input_ids": mismatched["input_ids"],
        "KL_attention_mask": mismatched["attention_mask"],
        "KL_completion_mask": mismatched["completion_mask"],
        "label": torch.tensor(labels),
        "ref_logps": torch.tensor(ref),
        "ref_KL_logps": torch.tensor(ref_kl),
    }
    return FixedLogps(totals), batch


# KTO ----------------------------------------------------------------------------------


KTO_CASES = [
    # logps, ref_logps, labels, KL logps, ref KL logps
    (
        [-12.0, -8.5, -20.25, -3.0],
        [-11.0, -9.0, -18.0, -3.5],
        [True, False, True, False],
        [-10.0, -7.0, -15.0, -4.0],
        [-11.5, -7.25, -14.0, -6.0],
    ),
    # mean KL below zero: z0 is clamped to 0
    (
        [-5.0, -6.0, -7.0],
        [-4.0, -7.5, -6.5],
        [False, True, True],
        [-9.0, -8.0, -7.0],
        [-8.0, -6.0, -5.0],
    ),
    # only desirable rows
    ([-2.0, -30.0], [-4.0, -25.0], [True, True], [-1.0, -2.0], [-1.5, -2.75]),
]


@pytest.mark.parametrize("case", KTO_CASES)
def test_kto_batch_loss_is_the_mean_of_the_papers_per_example_losses(
    case: tuple[list[float], ...], tiny: tuple[Any, Any], tmp_path: Any
) -> None:
    logps, ref, labels, kl, ref_kl = case
    trainer = kto_trainer(tiny, tmp_path, desirable_weight=1.0, undesirable_weight=1.0)
    policy, batch = kto_batch(logps, ref, labels, kl, ref_kl)  # type: ignore[arg-type]
    loss = trainer._compute_loss(policy, batch, return_outputs=False)
    expected, z0 = kto_reference(
        logps=logps,
        ref_logps=ref,
        labels=labels,
        kl_logps=kl,
        ref_kl_logps=ref_kl,  # type: ignore[arg-type]
        beta=BETA,
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    assert float(loss.detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(z0, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("index", range(4))
def test_each_kto_example_alone_matches_eq_7_with_its_kl_reference_point(
    index: int, tiny: tuple[Any, Any], tmp_path: Any
) -> None:
    logps, ref, labels, kl, ref_kl = KTO_CASES[0]
    trainer = kto_trainer(tiny, tmp_path, desirable_weight=1.0, undesirable_weight=1.0)
    one = [[values[index]] for values in (logps, ref, labels, kl, ref_kl)]
    policy, batch = kto_batch(*one)  # type: ignore[arg-type]
    loss = trainer._compute_loss(policy, batch, return_outputs=False)
    (expected,), _ = kto_reference(
        logps=one[0],
        ref_logps=one[1],
        labels=one[2],
        kl_logps=one[3],
        ref_kl_logps=one[4],  # type: ignore[arg-type]
        beta=BETA,
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    rewards = trainer._metrics["train"]["rewards/chosen" if labels[index] else "rewards/rejected"]
    assert rewards[-1] == pytest.approx(BETA * (logps[index] - ref[index]), rel=1e-5)


def test_kto_class_weights_scale_their_examples(tiny: tuple[Any, Any], tmp_path: Any) -> None:
    logps, ref, labels, kl, ref_kl = KTO_CASES[0]
    trainer = kto_trainer(tiny, tmp_path, desirable_weight=1.3, undesirable_weight=0.7)
    policy, batch = kto_batch(logps, ref, labels, kl, ref_kl)  # type: ignore[arg-type]
    loss = trainer._compute_loss(policy, batch, return_outputs=False)
    expected, _ = kto_reference(
        logps=logps,
        ref_logps=ref,
        labels=labels,
        kl_logps=kl,
        ref_kl_logps=ref_kl,  # type: ignore[arg-type]
        beta=BETA,
        desirable_weight=1.3,
        undesirable_weight=0.7,
    )
    assert float(loss.detach()) == pytest.approx(sum(expected) / len(expected), rel=1e-5)


# APO and DPO ----------------------------------------------------------------------------


PAIRS = [
    # policy chosen, policy rejected, ref chosen, ref rejected
    (-10.0, -12.0, -11.0, -11.5),
    (-30.5, -8.0, -28.0, -9.0),
    (-4.0, -4.0, -4.0, -4.0),
    (-55.0, -70.0, -60.0, -52.0),
]


@pytest.mark.parametrize("loss_type", ["apo_zero", "apo_down", "sigmoid"])
@pytest.mark.parametrize("pair", PAIRS)
def test_paired_per_example_loss_matches_the_paper(
    loss_type: str, pair: tuple[float, float, float, float], tiny: tuple[Any, Any], tmp_path: Any
) -> None:
    chosen, rejected, ref_chosen, ref_rejected = pair
    trainer = dpo_trainer(tiny, tmp_path, loss_type)
    policy = FixedLogps({10: chosen, 11: rejected})
    batch = {
        **sequences([10, 11]),
        "ref_chosen_logps": torch.tensor([ref_chosen]),
        "ref_rejected_logps": torch.tensor([ref_rejected]),
    }
    loss = trainer._compute_loss(policy, batch, return_outputs=False)
    expected = paired_reference(
        loss_type, rc=chosen - ref_chosen, rr=rejected - ref_rejected, beta=BETA
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    margin = trainer._metrics["train"]["rewards/margins"][-1]
    assert margin == pytest.approx(
        BETA * ((chosen - ref_chosen) - (rejected - ref_rejected)), abs=1e-5
    )


@pytest.mark.parametrize("loss_type", ["apo_zero", "apo_down", "sigmoid"])
def test_paired_batch_loss_is_the_mean_over_pairs(
    loss_type: str, tiny: tuple[Any, Any], tmp_path: Any
) -> None:
    trainer = dpo_trainer(tiny, tmp_path, loss_type)
    n = len(PAIRS)
    totals = {10 + i: p[0] for i, p in enumerate(PAIRS)} | {
        20 + i: p[1] for i, p in enumerate(PAIRS)
    }
    batch = {
        **sequences([10 + i for i in range(n)] + [20 + i for i in range(n)]),
        "ref_chosen_logps": torch.tensor([p[2] for p in PAIRS]),
        "ref_rejected_logps": torch.tensor([p[3] for p in PAIRS]),
    }
    loss = trainer._compute_loss(FixedLogps(totals), batch, return_outputs=False)
    expected = [
        paired_reference(loss_type, rc=p[0] - p[2], rr=p[1] - p[3], beta=BETA) for p in PAIRS
    ]
    assert float(loss.detach()) == pytest.approx(sum(expected) / n, rel=1e-5)


# Our own arithmetic ---------------------------------------------------------------------


def test_completion_logps_equal_what_trl_trains_on(tiny: tuple[Any, Any], tmp_path: Any) -> None:
    """Evaluation scores the exact sequences and sums TRL's trainer uses."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny
    rows = [
        {"prompt": "a b c", "chosen": " d e", "rejected": " e"},
        {"prompt": "c", "chosen": " a b c d", "rejected": " b b"},
    ]
    args = DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        activation_checkpointing=False,
        precompute_ref_log_probs=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trl_chosen = trainer.train_dataset["ref_chosen_logps"]
    trl_rejected = trainer.train_dataset["ref_rejected_logps"]
    examples = [tokenize_example(tokenizer, r["prompt"], r["chosen"]) for r in rows]
    examples += [tokenize_example(tokenizer, r["prompt"], r["rejected"]) for r in rows]
    ours = completion_logps(trainer.model, examples, pad_token_id=tokenizer.pad_token_id)
    assert ours == pytest.approx(list(trl_chosen) + list(trl_rejected), abs=1e-4)
    prepared = trainer.train_dataset[0]
    assert examples[0].prompt_ids == prepared["prompt_ids"]
    assert examples[0].completion_ids == prepared["chosen_ids"]


def test_preference_scores_follow_their_definitions() -> None:
    scores = preference_scores(
        thumbs_rewards=[0.5, -0.2, 0.1, 0.0],
        thumbs_labels=[True, True, False, False],
        chosen_rewards=[1.0, 0.0],
        rejected_rewards=[0.0, 0.5],
    )
    # thumbs ranked: (0.5 > 0.1) (0.5 > 0.0) (-0.2 < 0.1) (-0.2 < 0.0): 2 of 4
    assert scores.thumbs_accuracy == pytest.approx(0.5)
    # thumbs by sign: right, wrong, wrong, tie
    assert scores.thumbs_sign_accuracy == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert scores.pair_accuracy == pytest.approx(0.5)  # pairs: right, wrong
    assert scores.preference_accuracy == pytest.approx((0.5 * 4 + 0.5 * 2) / 6)
    thumbs_margin = (0.5 - 0.2) / 2 - (0.1 + 0.0) / 2
    pair_margin = (1.0 - 0.5) / 2
    assert scores.reward_margin == pytest.approx((thumbs_margin * 4 + pair_margin * 2) / 6)


def test_the_thumbs_ranking_ignores_a_shift_of_every_reward() -> None:
    """A run that only learned the answer format lifts every reward: the sign accuracy
    then reads the share of thumbs-up, the ranking stays at chance."""
    labels = [True, True, True, False]
    shifted = preference_scores(
        thumbs_rewards=[2.0, 1.0, 3.0, 2.5],
        thumbs_labels=labels,
        chosen_rewards=[],
        rejected_rewards=[],
    )
    assert shifted.thumbs_sign_accuracy == 0.75
    assert shifted.thumbs_accuracy == pytest.approx(1 / 3)
    ranked = preference_scores(
        thumbs_rewards=[3.0, 2.6, 2.7, 2.5],
        thumbs_labels=labels,
        chosen_rewards=[],
        rejected_rewards=[],
    )
    assert ranked.preference_accuracy == 1.0
    one_class = preference_scores(
        thumbs_rewards=[-1.0, 2.0],
        thumbs_labels=[False, False],
        chosen_rewards=[],
        rejected_rewards=[],
    )
    assert one_class.thumbs_accuracy == one_class.thumbs_sign_accuracy == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_the_ranking_equals_the_count_over_all_combinations(seed: int) -> None:
    import random

    rng = random.Random(seed)
    up = [round(rng.uniform(-1, 1), 1) for _ in range(rng.randrange(1, 30))]
    down = [round(rng.uniform(-1, 1), 1) for _ in range(rng.randrange(1, 30))]
    expected = sum(1.0 if u > d else 0.5 if u == d else 0.0 for u in up for d in down)
    assert ranking_accuracy(up, down) == pytest.approx(expected / (len(up) * len(down)))


def test_a_policy_equal_to_its_reference_scores_exactly_chance() -> None:
    logps = [-3.0, -7.25, -1.5]
    rewards = implicit_rewards(logps, logps, 0.1)
    scores = preference_scores(
        thumbs_rewards=rewards,
        thumbs_labels=[True, False, True],
        chosen_rewards=[0.0],
        rejected_rewards=[TIE / 2],
    )
    assert scores.preference_accuracy == 0.5
    assert scores.reward_margin == pytest.approx(-TIE / 8)


@pytest.mark.parametrize(
    ("n_d", "n_u", "spec_d", "spec_u"),
    [
        (10, 10, None, None),
        (30, 10, None, None),
        (3, 40, None, None),
        (25, 5, 1.0, None),
        (25, 5, None, 2.0),
        (7, 9, 1.0, 1.0),
    ],
)
def test_unset_kto_weights_are_balanced_within_trls_range(
    n_d: int, n_u: int, spec_d: float | None, spec_u: float | None
) -> None:
    d, u = kto_weights(n_desirable=n_d, n_undesirable=n_u, desirable=spec_d, undesirable=spec_u)
    if spec_d is not None:
        assert d == spec_d
    if spec_u is not None:
        assert u == spec_u
    if spec_d is None or spec_u is None:
        assert (
            1.0
            <= kto_ratio(n_desirable=n_d, n_undesirable=n_u, desirable=d, undesirable=u)
            <= 4 / 3
        )
    if spec_d is None and spec_u is None:
        assert min(d, u) == 1.0  # the minority class is up-weighted, the majority keeps 1
