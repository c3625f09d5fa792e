"""AlignedModel: a served language model and the loop that aligns it on feedback."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import (
    CRON,
    Autoscaling,
    CronSchedule,
    LocalObjectReference,
    Model,
    Placement,
    Quantity,
    ResourceRequirements,
    Rule,
    ScaledStatus,
    Timestamp,
)

AlignmentMethod = Literal["kto", "apo-zero", "apo-down", "dpo", "sft"]
GateMetric = Literal[
    "preference-accuracy",
    "reward-margin",
    "answer-overlap",
    "citation-correctness",
    "retrieval-recall",
]
REVISION = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$"
MIG_PROFILE = r"^[1-7]g\.[0-9]{1,3}gb(\.me)?$"


class BaseModelSource(Model):
    """The model revision alignment starts from."""

    model: str = Field(
        min_length=1,
        max_length=512,
        description="A path in the artifact store (models/<name>) or a name cached in the"
        " image; never fetched from a hub at run time.",
    )
    revision: str = Field(
        default="base", max_length=128, pattern=REVISION, description="Revision of the model."
    )


class ModelCache(Model):
    """The volume model weights and engines are pulled into once and shared by replicas."""

    size: Quantity = Field(default="100Gi", description="Capacity of the cache volume.")
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the cache volume; it must offer ReadWriteMany when"
        " there is more than one replica. Empty uses the cluster default.",
    )


class ModelServing(Placement):
    """How the model is served: the engine and the GPUs it runs on."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(has(self.migProfile) && has(self.gpus))",
            message="set either gpus or migProfile, not both",
            field="migProfile",
            check=lambda s: s.mig_profile is None or s.gpus is None,
        ),
        Rule(
            cel="self.engine != 'tensorrt-llm' || has(self.gpus) || has(self.migProfile)",
            message="engine tensorrt-llm needs gpus or migProfile",
            field="gpus",
            check=lambda s: (
                s.engine != "tensorrt-llm" or s.gpus is not None or s.mig_profile is not None
            ),
        ),
        Rule(
            cel="!has(self.gpus) || self.tensorParallel <= self.gpus",
            message="tensorParallel must not exceed gpus",
            field="tensorParallel",
            check=lambda s: s.gpus is None or s.tensor_parallel <= s.gpus,
        ),
        Rule(
            cel="!has(self.migProfile) || self.tensorParallel == 1",
            message="a MIG slice cannot be tensor-parallel: tensorParallel must be 1",
            field="tensorParallel",
            check=lambda s: s.mig_profile is None or s.tensor_parallel == 1,
        ),
        Rule(
            cel="self.engine == 'tensorrt-llm' || self.quantization == 'none'",
            message="quantization needs engine tensorrt-llm",
            field="quantization",
            check=lambda s: s.engine == "tensorrt-llm" or s.quantization == "none",
        ),
    )

    engine: Literal["tensorrt-llm", "transformers"] = Field(
        default="transformers",
        description="tensorrt-llm: Triton with the TensorRT-LLM backend on NVIDIA GPUs;"
        " transformers: the CPU (or single-GPU) generator for development and small loads.",
    )
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        default="bfloat16", description="Weights and activations dtype."
    )
    quantization: Literal["none", "fp8", "int4_awq"] = Field(
        default="none", description="Engine quantization (tensorrt-llm only)."
    )
    max_batch_size: int = Field(default=8, ge=1, le=2048, description="Engine max batch.")
    max_input_length: int = Field(
        default=4096, ge=16, le=262144, description="Longest prompt in tokens."
    )
    max_output_length: int = Field(
        default=512, ge=1, le=65536, description="Longest completion in tokens."
    )
    tensor_parallel: int = Field(default=1, ge=1, le=8, description="Tensor-parallel ranks.")
    gpus: int | None = Field(
        default=None, ge=1, le=8, description="nvidia.com/gpu per replica (not with MIG)."
    )
    gpu_product: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description="Required nvidia.com/gpu.product node label, e.g. NVIDIA-H100-80GB-HBM3.",
    )
    mig_profile: str | None = Field(
        default=None,
        max_length=16,
        pattern=MIG_PROFILE,
        description="MIG slice per replica, e.g. 1g.10gb (requests nvidia.com/mig-1g.10gb).",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Serving replicas; ignored while autoscaling is set.",
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Autoscale on CPU.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Per-replica CPU and memory."
    )
    shared_memory: Quantity = Field(
        default="2Gi", description="Size of /dev/shm (NCCL and the Python backend need it)."
    )
    cache: ModelCache = Field(default_factory=ModelCache, description="Shared weights cache.")


class Lora(Model):
    """LoRA adapter shape (PEFT)."""

    r: int = Field(default=16, ge=1, le=512, description="Adapter rank.")
    alpha: int = Field(default=32, ge=1, le=2048, description="Scaling numerator.")
    dropout: float = Field(default=0.05, ge=0.0, le=0.9, description="Adapter dropout.")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=32,
        description="Module names to adapt.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Trigger(Model):
    """When a new AlignmentRun starts."""

    min_feedback: int = Field(
        default=200,
        ge=1,
        le=10_000_000,
        description="New feedback rows since the last run needed to start one.",
    )
    schedule: CronSchedule | None = Field(
        default=None,
        max_length=128,
        pattern=CRON,
        description="Cron schedule (UTC): also start a run at these times when any"
        " feedback arrived since the last run, even below minFeedback.",
    )


class EvaluationGate(Model):
    """What a candidate revision must show before it is promoted."""

    dataset: LocalObjectReference | None = Field(
        default=None,
        description="ConfigMap with an evaluation set (questions with reference answers"
        " and/or relevant document ids); without it only held-out feedback is scored.",
    )
    metric: GateMetric = Field(
        default="preference-accuracy", description="The metric the gate compares."
    )
    min_improvement: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="How much the candidate must beat the serving revision by.",
    )
    held_out_fraction: float = Field(
        default=0.2, ge=0.05, le=0.5, description="Share of feedback kept out of training."
    )


class Alignment(Model):
    """Learning from feedback."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(self.evaluation.metric in ['answer-overlap', 'citation-correctness',"
            " 'retrieval-recall']) || has(self.evaluation.dataset)",
            message="evaluation.dataset is required for metrics scored on an evaluation set",
            field="evaluation.dataset",
            check=lambda s: (
                s.evaluation.metric in ("preference-accuracy", "reward-margin")
                or s.evaluation.dataset is not None
            ),
        ),
    )

    enabled: bool = Field(default=True, description="Start runs when the trigger fires.")
    method: AlignmentMethod = Field(
        default="kto",
        description="kto: thumbs up/down; apo-zero, apo-down, dpo: corrections as"
        " preference pairs; sft: supervised on corrections.",
    )
    lora: Lora = Field(default_factory=Lora, description="Adapter shape.")
    beta: float = Field(
        default=0.1, gt=0.0, le=10.0, description="Strength of the pull to the reference."
    )
    desirable_weight: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="KTO weight of thumbs-up rows; empty balances the classes as TRL advises.",
    )
    undesirable_weight: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="KTO weight of thumbs-down rows; empty balances the classes.",
    )
    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0, description="Learning rate.")
    max_steps: int = Field(default=200, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="Per-device batch size.")
    trigger: Trigger = Field(default_factory=Trigger, description="When runs start.")
    evaluation: EvaluationGate = Field(
        default_factory=EvaluationGate, description="The promotion gate."
    )
    gpus: int = Field(default=0, ge=0, le=8, description="nvidia.com/gpu for training Jobs.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Training Job resources."
    )


class AlignedModelSpec(Model):
    """The base model, how it is served and how it learns."""

    base: BaseModelSource = Field(description="The starting model.")
    serving: ModelServing = Field(default_factory=ModelServing, description="Serving.")
    alignment: Alignment = Field(default_factory=Alignment, description="Alignment loop.")
    feedback_from: LocalObjectReference | None = Field(
        default=None,
        description="ContextualDeployment whose feedback trains this model; empty means"
        " the one that references this model.",
    )


class Revision(Model):
    """A model revision and how it scored."""

    id: str = Field(max_length=128, description="Revision id (content hash).")
    parent: str | None = Field(default=None, max_length=128, description="Revision trained from.")
    alignment_run: str | None = Field(default=None, max_length=253, description="Producing run.")
    created: Timestamp = Field(description="Creation time.")
    scores: dict[str, float] = Field(
        default_factory=dict, max_length=16, description="Evaluation scores by metric."
    )
    promoted: bool = Field(default=False, description="Whether it was ever served.")


class EngineStatus(Model):
    """The serving engine."""

    state: Literal["Pending", "Building", "Ready", "Failed"] = Field(
        description="Engine build state."
    )
    engine_id: str | None = Field(
        default=None, max_length=128, description="Built engine id in the artifact store."
    )
    message: str | None = Field(default=None, max_length=4096, description="Detail.")


class AlignedModelStatus(ScaledStatus):
    """Served and candidate revisions, and their history."""

    serving_revision: str | None = Field(
        default=None, max_length=128, description="Revision the serving pods run."
    )
    candidate_revision: str | None = Field(
        default=None, max_length=128, description="Revision under evaluation."
    )
    revisions: list[Revision] = Field(
        default_factory=list, max_length=20, description="Latest revisions with scores."
    )
    engine: EngineStatus | None = Field(default=None, description="Serving engine.")
    endpoint: str | None = Field(
        default=None, max_length=512, description="In-cluster KServe v2 endpoint."
    )
    feedback_since_last_run: int | None = Field(
        default=None, ge=0, description="Feedback rows recorded since the last run started."
    )
