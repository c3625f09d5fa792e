"""`contextlm train`: align a model revision on exported feedback with TRL and LoRA.

    kto        KTOTrainer, loss_type="kto", on thumbs rows (prompt, completion, label)
    apo-zero   DPOTrainer, loss_type="apo_zero", on correction pairs (prompt, chosen, rejected)
    apo-down   DPOTrainer, loss_type="apo_down", on correction pairs
    dpo        DPOTrainer, loss_type="sigmoid", on correction pairs
    sft        SFTTrainer on (prompt, completion=correction), loss on the completion only

The policy is a PEFT LoRA adapter with the spec's rank, alpha, dropout and target
modules; its reference is the same weights with the adapter as it was at the start (TRL
disables a fresh adapter, or keeps a frozen copy named "ref" of one being continued), so
no second model is held in memory. Beta, learning rate, steps and batch size come from
the spec; KTO's class weights, when the spec leaves them unset, are set so that
desirable_weight·n_desirable / (undesirable_weight·n_undesirable) = 1, inside the
[1, 4/3] TRL recommends (see `losses.kto_weights`).

The adapter (and merged weights when asked for) is published as a new immutable revision
(see `revisions`); progress and loss go to the log at every logging step, and to a
Prometheus text file when one is configured. The result line is
`{"revision", "parent", "trainLoss", "steps", ...}`; it is what the operator copies into
the AlignmentRun's status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .feedback.export import dataset_prefix, read_jsonl, report
from .losses import finite, kto_ratio, kto_weights
from .revisions import BASE, Loader, RevisionManifest, adapter_config, publish_revision, revision_id

if TYPE_CHECKING:
    from ..api.aligned_model import Alignment
    from .config import TrainConfig
    from .store import ArtifactStore

log = logging.getLogger("contextlm.train")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
PAIRED = {"apo-zero": "apo_zero", "apo-down": "apo_down", "dpo": "sigmoid"}
EXIT_OK, EXIT_ERROR, EXIT_NO_DATA = 0, 1, 2


class NoTrainingData(RuntimeError):
    """The dataset holds nothing the method can learn from; retrying will not help."""


@dataclass
class TrainingData:
    """The rows one method trains on, in TRL's dataset format."""

    rows: list[dict[str, Any]]
    n_desirable: int = 0
    n_undesirable: int = 0


def training_rows(
    method: str, *, thumbs: list[dict[str, Any]], pairs: list[dict[str, Any]]
) -> TrainingData:
    """Select and shape the rows for `method`; raise NoTrainingData when there are none."""
    if method == "kto":
        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])}
            for r in thumbs
        ]
        n_d = sum(r["label"] for r in rows)
        data = TrainingData(rows, n_desirable=n_d, n_undesirable=len(rows) - n_d)
        if not data.n_desirable or not data.n_undesirable:
            # KTO can learn from one class alone, but then nothing anchors the other
            # direction: a platform team should see this rather than a silently odd model.
            log.warning("KTO with only %s rows", "desirable" if n_d else "undesirable")
    elif method == "sft":
        data = TrainingData([{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs])
    else:
        data = TrainingData(
            [
                {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in pairs
            ]
        )
    if not data.rows:
        source = "thumbs-up/down" if method == "kto" else "correction"
        raise NoTrainingData(f"method {method} needs {source} feedback and the dataset has none")
    return data


# Training --------------------------------------------------------------------------


@dataclass
class Hyper:
    """What the trainer is told, resolved from the spec and the run."""

    method: str
    beta: float
    learning_rate: float
    max_steps: int
    batch_size: int
    lora: dict[str, Any] | None  # None: full fine-tuning (the bench compares both)
    desirable_weight: float | None = None
    undesirable_weight: float | None = None
    max_length: int = 1024
    seed: int = 0
    device: str = "cpu"
    gradient_checkpointing: bool = False
    logging_steps: int = 1


@dataclass
class Progress:
    """Filled by the logging callback: the latest loss and the history of log lines."""

    last: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0


def hyper_from_spec(
    alignment: Alignment, *, max_steps: int | None, data: TrainingData, **extra: Any
) -> Hyper:
    method = alignment.method
    desirable = undesirable = None
    if method == "kto":
        desirable, undesirable = kto_weights(
            n_desirable=data.n_desirable,
            n_undesirable=data.n_undesirable,
            desirable=alignment.desirable_weight,
            undesirable=alignment.undesirable_weight,
        )
    steps = max_steps or alignment.max_steps
    lora = alignment.lora
    return Hyper(
        method=method,
        beta=alignment.beta,
        learning_rate=alignment.learning_rate,
        max_steps=steps,
        batch_size=alignment.batch_size,
        lora={
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": sorted(lora.target_modules),
        },
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        logging_steps=max(1, steps // 20),
        **extra,
    )


def make_trainer(
    model: Any,
    tokenizer: Any,
    data: TrainingData,
    hyper: Hyper,
    *,
    output_dir: Path,
    progress: Progress,
) -> Any:
    """The TRL trainer for `hyper.method` (see `_trainer`), logging through `progress`
    instead of transformers' printer, which dumps raw dicts to stdout where the one-line
    result belongs."""
    from transformers import PrinterCallback

    trainer = _trainer(model, tokenizer, data, hyper, output_dir=output_dir, progress=progress)
    trainer.remove_callback(PrinterCallback)
    return trainer


def _trainer(
    model: Any,
    tokenizer: Any,
    data: TrainingData,
    hyper: Hyper,
    *,
    output_dir: Path,
    progress: Progress,
) -> Any:
    """The TRL trainer for `hyper.method`, with a LoRA config unless `model` already
    carries an adapter (a continued revision) or `hyper.lora` is None (full tuning)."""
    from datasets import Dataset  # type: ignore[import-untyped]

    rows = list(data.rows)
    # KTO samples sequentially (its KL estimate pairs each example with its neighbour in
    # the batch), so the shuffle happens here, seeded.
    random.Random(hyper.seed).shuffle(rows)
    dataset = Dataset.from_list(rows)
    common = _common_args(hyper, output_dir)
    peft_config = _lora_config(hyper) if hyper.lora is not None and not _is_peft(model) else None
    callbacks = [_progress_callback(progress)]
    # Full fine-tuning needs a separate frozen reference; a copy of the starting weights
    # (TRL would otherwise reload it from the checkpoint path).
    reference = _frozen_copy(model) if hyper.lora is None and hyper.method != "sft" else None
    if hyper.method == "kto":
        from trl.trainer.kto_config import KTOConfig
        from trl.trainer.kto_trainer import KTOTrainer

        # TRL refuses a batch of one for KTO: the KL term would equal the reward.
        common["per_device_train_batch_size"] = max(2, hyper.batch_size)
        kto_args = KTOConfig(
            loss_type="kto",
            beta=hyper.beta,
            desirable_weight=hyper.desirable_weight or 1.0,
            undesirable_weight=hyper.undesirable_weight or 1.0,
            **common,
        )
        return KTOTrainer(
            model=model,
            ref_model=reference,
            args=kto_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    if hyper.method in PAIRED:
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        dpo_args = DPOConfig(loss_type=[PAIRED[hyper.method]], beta=hyper.beta, **common)
        return DPOTrainer(
            model=model,
            ref_model=reference,
            args=dpo_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    if hyper.method == "sft":
        from trl.trainer.sft_config import SFTConfig
        from trl.trainer.sft_trainer import SFTTrainer

        sft_args = SFTConfig(completion_only_loss=True, **common)
        return SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    raise ValueError(f"unknown alignment method {hyper.method!r}")


def _common_args(hyper: Hyper, output_dir: Path) -> dict[str, Any]:
    import torch

    cuda = hyper.device.startswith("cuda")
    return {
        "output_dir": str(output_dir),
        "max_steps": hyper.max_steps,
        "per_device_train_batch_size": hyper.batch_size,
        "learning_rate": hyper.learning_rate,
        "max_length": hyper.max_length,
        "seed": hyper.seed,
        "data_seed": hyper.seed,
        "logging_steps": hyper.logging_steps,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": not cuda,
        # Weights stay float32; on a GPU with bfloat16 the matmuls run in it (autocast).
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "fp16": False,
        _checkpointing_arg(): hyper.gradient_checkpointing,
        "dataloader_num_workers": 0,
    }


def _checkpointing_arg() -> str:
    """transformers 5 renamed `gradient_checkpointing` (still accepted, with a warning)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )


def _frozen_copy(model: Any) -> Any:
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _lora_config(hyper: Hyper) -> Any:
    from peft import LoraConfig

    assert hyper.lora is not None
    return LoraConfig(task_type="CAUSAL_LM", bias="none", **hyper.lora)


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _progress_callback(progress: Progress) -> Any:
    from transformers import TrainerCallback

    class LogProgress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            numbers["step"] = float(state.global_step)
            progress.history.append(numbers)
            if "loss" in numbers:
                progress.last = numbers
            progress.tokens = int(numbers.get("num_tokens", progress.tokens))
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(numbers.items()) if k != "step")
            log.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    return LogProgress()


# Metrics -----------------------------------------------------------------------------


class TextfileMetrics:
    """Training progress as a Prometheus text file, rewritten atomically at each log step
    (node-exporter's textfile collector, or a sidecar, picks it up): a batch Job has no
    port worth scraping and no pushgateway is assumed."""

    def __init__(self, path: str, *, run: str, model: str, method: str) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.path = path
        self.registry = CollectorRegistry()
        labels = ["model", "run", "method"]
        self.label_values = (model, run, method)
        self.step = Gauge(
            "contextlm_train_step", "Optimizer steps taken.", labels, registry=self.registry
        )
        self.max_steps = Gauge(
            "contextlm_train_max_steps", "Steps the run will take.", labels, registry=self.registry
        )
        self.loss = Gauge(
            "contextlm_train_loss", "Latest logged training loss.", labels, registry=self.registry
        )
        self.margin = Gauge(
            "contextlm_train_reward_margin",
            "Latest logged implicit reward margin (chosen minus rejected).",
            labels,
            registry=self.registry,
        )

    def update(self, *, step: int, max_steps: int, numbers: dict[str, float]) -> None:
        from prometheus_client import write_to_textfile

        self.step.labels(*self.label_values).set(step)
        self.max_steps.labels(*self.label_values).set(max_steps)
        if "loss" in numbers:
            self.loss.labels(*self.label_values).set(numbers["loss"])
        if "rewards/margins" in numbers:
            self.margin.labels(*self.label_values).set(numbers["rewards/margins"])
        write_to_textfile(self.path, self.registry)


def _metrics_callback(metrics: TextfileMetrics) -> Any:
    from transformers import TrainerCallback

    class WriteMetrics(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            metrics.update(step=state.global_step, max_steps=state.max_steps, numbers=numbers)

    return WriteMetrics()


# The job -----------------------------------------------------------------------------


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def same_shape(adapter: dict[str, Any], lora: dict[str, Any]) -> bool:
    """Whether an existing adapter has the spec's rank, alpha and target modules."""
    targets = adapter.get("target_modules") or []
    return bool(
        adapter.get("r") == lora["r"]
        and adapter.get("lora_alpha") == lora["lora_alpha"]
        and sorted(targets) == lora["target_modules"]
    )


def starting_model(loader: Loader, parent: str, hyper: Hyper) -> tuple[Any, str]:
    """The model to train and the weights its adapter will apply to (`adapterBase`)."""
    from transformers import AutoModelForCausalLM

    if parent == BASE:
        return AutoModelForCausalLM.from_pretrained(loader.base_dir()), BASE
    adapter_dir = loader.adapter_over_base(parent)
    assert hyper.lora is not None
    if adapter_dir is not None and same_shape(adapter_config(adapter_dir), hyper.lora):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(loader.base_dir())
        log.info("continuing the adapter of %s (TRL keeps a frozen copy as the reference)", parent)
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True), BASE
    log.info("merging %s first: its adapter's shape differs from the spec's", parent)
    return loader.full_model(parent), parent


def train(config: TrainConfig, store: ArtifactStore) -> dict[str, Any]:
    import torch

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    prefix = config.dataset_prefix or dataset_prefix(config.namespace, config.model, config.run)
    if store.manifest(prefix) is None:
        raise NoTrainingData(f"no published dataset at {prefix} (run `contextlm export` first)")
    method = config.alignment.method
    data = training_rows(
        method,
        thumbs=read_jsonl(store, f"{prefix}/kto-train.jsonl"),
        pairs=read_jsonl(store, f"{prefix}/pairs-train.jsonl"),
    )
    device = pick_device(config.device)
    hyper = hyper_from_spec(
        config.alignment,
        max_steps=config.max_steps,
        data=data,
        max_length=config.max_length,
        seed=config.seed,
        device=device,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    _log_plan(hyper, data)
    loader = Loader(
        store,
        namespace=config.namespace,
        model=config.model,
        base_model=config.base_model,
        cache_dir=Path(config.cache_dir).expanduser(),
    )
    from transformers import set_seed

    set_seed(config.seed)
    model, adapter_base = starting_model(loader, config.base_revision, hyper)
    tokenizer = loader.tokenizer()
    Path(config.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train-", dir=config.work_dir))
    try:
        progress = Progress()
        trainer = make_trainer(
            model, tokenizer, data, hyper, output_dir=work / "trainer", progress=progress
        )
        if config.metrics_file:
            metrics = TextfileMetrics(
                config.metrics_file, run=config.run, model=config.model, method=method
            )
            trainer.add_callback(_metrics_callback(metrics))
        output = trainer.train()
        merged = config.merge or adapter_base != BASE
        adapter_dir, merged_dir = save_outputs(trainer, tokenizer, work, merged=merged)
        return _publish(
            config,
            store,
            hyper=hyper,
            data_prefix=prefix,
            adapter_dir=adapter_dir,
            merged_dir=merged_dir,
            adapter_base=adapter_base,
            loss=progress.last.get("loss", float(output.training_loss)),
            mean_loss=float(output.training_loss),
            steps=int(output.global_step),
            seconds=time.monotonic() - started,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _log_plan(hyper: Hyper, data: TrainingData) -> None:
    log.info(
        "training %s on %d rows: %d steps, batch %d, lr %g, beta %g, lora %s, device %s",
        hyper.method,
        len(data.rows),
        hyper.max_steps,
        hyper.batch_size,
        hyper.learning_rate,
        hyper.beta,
        hyper.lora,
        hyper.device,
    )
    if hyper.method == "kto" and hyper.desirable_weight and hyper.undesirable_weight:
        ratio = kto_ratio(
            n_desirable=data.n_desirable,
            n_undesirable=data.n_undesirable,
            desirable=hyper.desirable_weight,
            undesirable=hyper.undesirable_weight,
        )
        log.info(
            "KTO weights: desirable %.3g (%d rows), undesirable %.3g (%d rows), ratio %.3g",
            hyper.desirable_weight,
            data.n_desirable,
            hyper.undesirable_weight,
            data.n_undesirable,
            ratio,
        )


def save_outputs(
    trainer: Any, tokenizer: Any, work: Path, *, merged: bool
) -> tuple[Path, Path | None]:
    """adapter/ (the trained adapter only, never TRL's frozen "ref" copy) and merged/."""
    model = trainer.model
    adapter_dir = work / "adapter"
    model.save_pretrained(adapter_dir, selected_adapters=["default"])
    for extra in ("README.md",):
        (adapter_dir / extra).unlink(missing_ok=True)  # model card with a timestamp: not content
    if not merged:
        return adapter_dir, None
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    merged_dir = work / "merged"
    model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return adapter_dir, merged_dir


def _publish(
    config: TrainConfig,
    store: ArtifactStore,
    *,
    hyper: Hyper,
    data_prefix: str,
    adapter_dir: Path,
    merged_dir: Path | None,
    adapter_base: str,
    loss: float,
    mean_loss: float,
    steps: int,
    seconds: float,
) -> dict[str, Any]:
    revision = revision_id(
        adapter_dir,
        parent=config.base_revision,
        adapter_base=adapter_base,
        base_model=config.base_model,
    )
    dataset = store.manifest(data_prefix) or {}
    manifest = RevisionManifest(
        revision=revision,
        namespace=config.namespace,
        model=config.model,
        base_model=config.base_model,
        parent=config.base_revision,
        adapter_base=adapter_base,
        merged=merged_dir is not None,
        method=hyper.method,
        alignment_run=config.run,
        lora=hyper.lora or {},
        beta=hyper.beta,
        train_loss=finite(loss),
        steps=steps,
        dataset={
            "prefix": data_prefix,
            "datasetId": dataset.get("datasetId"),
            "counts": dataset.get("counts"),
        },
        created=dt.datetime.now(dt.UTC).isoformat(),
    )
    created = publish_revision(store, manifest, adapter_dir=adapter_dir, merged_dir=merged_dir)
    log.info(
        "%s revision %s (parent %s)",
        "published" if created else "found",
        revision,
        config.base_revision,
    )
    return {
        "revision": revision,
        "parent": config.base_revision,
        "adapterBase": adapter_base,
        "merged": merged_dir is not None,
        "method": hyper.method,
        "trainLoss": finite(loss),
        "meanTrainLoss": finite(mean_loss),
        "steps": steps,
        "seconds": round(seconds, 1),
    }


# Process ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from .config import TrainConfig, load_config
    from .models import ModelNotFound
    from .store import StoreError, open_store

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    termination_log = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    config = load_config(TrainConfig, args.config)
    try:
        result = train(config, open_store(config.store))
    except (NoTrainingData, ModelNotFound, LookupError) as exc:
        log.error("%s", exc)
        error = {"error": type(exc).__name__, "reason": str(exc)}
        return report(error, termination_log, EXIT_NO_DATA)
    except (StoreError, OSError, RuntimeError, ValueError) as exc:
        log.exception("training failed")
        return report(
            {"error": type(exc).__name__, "reason": str(exc)[:2000]}, termination_log, EXIT_ERROR
        )
    return report(result, termination_log, EXIT_OK)
