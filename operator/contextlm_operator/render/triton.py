"""The Triton model repository and engine build for `engine: tensorrt-llm`. Pure functions.

The repository follows tensorrtllm_backend's `all_models/inflight_batcher_llm` layout
(the 2024-2025 releases whose configs carry `DECODER_QUERY`, `OUT_END_ID` and
`OUT_PROMPT_TABLE_EXTRA_IDS`): `preprocessing` (Python backend: text to token ids),
`tensorrt_llm` (the C++ backend running the engine with in-flight batching),
`postprocessing` (Python backend: token ids to text) and `ensemble` wiring them, so a
client sends `text_input` and `max_tokens` and reads `text_output`, exactly what
`contextlm generator` serves on CPU. The Python backends' `model.py` files are not
ours: they come from the Triton TensorRT-LLM image, and the config here must match that
release's tensor names (see docs/triton.md for what to check when bumping the image).

`config.pbtxt` text is written here from plain dicts rather than with protobuf, so the
operator needs no tritonclient; tests parse every file into tritonclient's ModelConfig.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Literal

from contextlm.api.aligned_model import AlignedModelSpec

PREPROCESSING = "preprocessing"
TENSORRT_LLM = "tensorrt_llm"
POSTPROCESSING = "postprocessing"
ENSEMBLE = "ensemble"
BLS = "tensorrt_llm_bls"
VERSION = "1"
EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"


class Symbol(str):
    """An enum value, written bare in text format (TYPE_INT32, KIND_CPU)."""


@dataclass(frozen=True)
class TritonOptions:
    """Serving knobs that are not in the AlignedModel spec (operator defaults).

    `decoupled` must be true for `stream` requests (tokens as they come); clients then
    use the gRPC stream for everything, since Triton refuses unary infer on a decoupled
    model. `kv_cache_reuse` keeps the KV blocks of a shared prefix (the system prompt
    and template every RAG request starts with) and needs an engine built with paged
    context FMHA, which `engine_build_commands` always asks for.
    """

    decoupled: bool = True
    kv_cache_free_gpu_mem_fraction: float = 0.9
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = (
        "guaranteed_no_evict"
    )
    kv_cache_reuse: bool = True
    chunked_context: bool = True
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0  # 0: unbounded
    preprocessing_instances: int = 1
    postprocessing_instances: int = 1
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    bls: bool = (
        False  # also render tensorrt_llm_bls (Python business logic instead of the ensemble)
    )
    bls_accumulate_tokens: bool = False


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    ragged: bool = False

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "data_type": Symbol(f"TYPE_{self.data_type}"),
            "dims": list(self.dims),
        }
        if self.reshape is not None:
            out["reshape"] = {"shape": list(self.reshape)}
        if self.optional:
            out["optional"] = True
        if self.ragged:
            out["allow_ragged_batch"] = True
        return out


def _t(name: str, data_type: str, *dims: int, **kw: Any) -> Tensor:
    return Tensor(name, data_type, tuple(dims), **kw)


def _opt(name: str, data_type: str, *dims: int, **kw: Any) -> Tensor:
    return Tensor(name, data_type, tuple(dims), optional=True, **kw)


SCALAR = {"reshape": ()}  # [1] per request, seen by the backend as a scalar

# What a client sends: the names and types of tensorrtllm_backend's ensemble, minus the
# multimodal, prompt-tuning and encoder-decoder tensors contextlm never uses.
ENSEMBLE_INPUTS = (
    _t("text_input", "STRING", 1),
    _t("max_tokens", "INT32", 1),
    _opt("bad_words", "STRING", -1),
    _opt("stop_words", "STRING", -1),
    _opt("end_id", "INT32", 1),
    _opt("pad_id", "INT32", 1),
    _opt("top_k", "INT32", 1),
    _opt("top_p", "FP32", 1),
    _opt("temperature", "FP32", 1),
    _opt("length_penalty", "FP32", 1),
    _opt("repetition_penalty", "FP32", 1),
    _opt("min_length", "INT32", 1),
    _opt("presence_penalty", "FP32", 1),
    _opt("frequency_penalty", "FP32", 1),
    _opt("random_seed", "UINT64", 1),
    _opt("beam_width", "INT32", 1),
    _opt("stream", "BOOL", 1),
)
ENSEMBLE_OUTPUTS = (_t("text_output", "STRING", -1),)

PREPROCESSING_INPUTS = (
    _t("QUERY", "STRING", 1),
    _opt("DECODER_QUERY", "STRING", 1),
    _t("REQUEST_OUTPUT_LEN", "INT32", 1),
    _opt("BAD_WORDS_DICT", "STRING", -1),
    _opt("STOP_WORDS_DICT", "STRING", -1),
    _opt("EMBEDDING_BIAS_WORDS", "STRING", -1),
    _opt("EMBEDDING_BIAS_WEIGHTS", "FP32", -1),
    _opt("END_ID", "INT32", 1),
    _opt("PAD_ID", "INT32", 1),
    _opt("PROMPT_TABLE_EXTRA_ID", "UINT64", 1),
)
PREPROCESSING_OUTPUTS = (
    _t("INPUT_ID", "INT32", -1),
    _t("REQUEST_INPUT_LEN", "INT32", 1),
    _t("DECODER_INPUT_ID", "INT32", -1),
    _t("REQUEST_DECODER_INPUT_LEN", "INT32", 1),
    _t("BAD_WORDS_IDS", "INT32", 2, -1),
    _t("STOP_WORDS_IDS", "INT32", 2, -1),
    _t("EMBEDDING_BIAS", "FP32", -1),
    _t("REQUEST_OUTPUT_LEN", "INT32", -1),
    _t("OUT_END_ID", "INT32", 1),
    _t("OUT_PAD_ID", "INT32", 1),
    _t("OUT_PROMPT_TABLE_EXTRA_IDS", "UINT64", -1),
)

TENSORRT_LLM_INPUTS = (
    _t("input_ids", "INT32", -1, ragged=True),
    _t("input_lengths", "INT32", 1, **SCALAR),
    _t("request_output_len", "INT32", 1, **SCALAR),
    _opt("end_id", "INT32", 1, **SCALAR),
    _opt("pad_id", "INT32", 1, **SCALAR),
    _opt("stop_words_list", "INT32", 2, -1, ragged=True),
    _opt("bad_words_list", "INT32", 2, -1, ragged=True),
    _opt("embedding_bias", "FP32", -1, ragged=True),
    _opt("beam_width", "INT32", 1, **SCALAR),
    _opt("temperature", "FP32", 1, **SCALAR),
    _opt("runtime_top_k", "INT32", 1, **SCALAR),
    _opt("runtime_top_p", "FP32", 1, **SCALAR),
    _opt("len_penalty", "FP32", 1, **SCALAR),
    _opt("repetition_penalty", "FP32", 1, **SCALAR),
    _opt("min_length", "INT32", 1, **SCALAR),
    _opt("presence_penalty", "FP32", 1, **SCALAR),
    _opt("frequency_penalty", "FP32", 1, **SCALAR),
    _opt("random_seed", "UINT64", 1, **SCALAR),
    _opt("return_log_probs", "BOOL", 1, **SCALAR),
    _opt("return_context_logits", "BOOL", 1, **SCALAR),
    _opt("return_generation_logits", "BOOL", 1, **SCALAR),
    _opt("stop", "BOOL", 1, **SCALAR),
    _opt("streaming", "BOOL", 1, **SCALAR),
    # LoRA: an aligned revision served as an adapter on the base engine (later).
    _opt("lora_task_id", "UINT64", 1, **SCALAR),
    _opt("lora_weights", "FP16", -1, -1, ragged=True),
    _opt("lora_config", "INT32", -1, 3, ragged=True),
)
TENSORRT_LLM_OUTPUTS = (
    _t("output_ids", "INT32", -1, -1),
    _t("sequence_length", "INT32", -1),
    _t("cum_log_probs", "FP32", -1),
    _t("output_log_probs", "FP32", -1, -1),
    _t("context_logits", "FP32", -1, -1),
    _t("generation_logits", "FP32", -1, -1, -1),
    _t("batch_index", "INT32", 1),
)

POSTPROCESSING_INPUTS = (
    _t("TOKENS_BATCH", "INT32", -1, -1),
    _t("SEQUENCE_LENGTH", "INT32", -1),
    _opt("CUM_LOG_PROBS", "FP32", -1),
    _opt("OUTPUT_LOG_PROBS", "FP32", -1, -1),
    _opt("CONTEXT_LOGITS", "FP32", -1, -1),
    _opt("GENERATION_LOGITS", "FP32", -1, -1, -1),
    _opt("BATCH_INDEX", "INT32", 1),
)
POSTPROCESSING_OUTPUTS = (
    _t("OUTPUT", "STRING", -1),
    _t("OUT_CUM_LOG_PROBS", "FP32", -1),
    _t("OUT_OUTPUT_LOG_PROBS", "FP32", -1, -1),
    _t("OUT_CONTEXT_LOGITS", "FP32", -1, -1),
    _t("OUT_GENERATION_LOGITS", "FP32", -1, -1, -1),
    _t("OUT_BATCH_INDEX", "INT32", 1),
)

# The ensemble's wiring: (step model, {step input: tensor}, {step output: tensor}).
# Only TOKENS_BATCH and SEQUENCE_LENGTH go to postprocessing: older model.py files
# reject any other input, newer ones take the rest as optional.
ENSEMBLE_STEPS: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = (
    (
        PREPROCESSING,
        {
            "QUERY": "text_input",
            "REQUEST_OUTPUT_LEN": "max_tokens",
            "BAD_WORDS_DICT": "bad_words",
            "STOP_WORDS_DICT": "stop_words",
            "END_ID": "end_id",
            "PAD_ID": "pad_id",
        },
        {
            "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
            "INPUT_ID": "_INPUT_ID",
            "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
            "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
            "BAD_WORDS_IDS": "_BAD_WORDS_IDS",
            "OUT_END_ID": "_PREPROCESSOR_END_ID",
            "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
        },
    ),
    (
        TENSORRT_LLM,
        {
            "input_ids": "_INPUT_ID",
            "input_lengths": "_REQUEST_INPUT_LEN",
            "request_output_len": "_REQUEST_OUTPUT_LEN",
            "end_id": "_PREPROCESSOR_END_ID",
            "pad_id": "_PREPROCESSOR_PAD_ID",
            "stop_words_list": "_STOP_WORDS_IDS",
            "bad_words_list": "_BAD_WORDS_IDS",
            "runtime_top_k": "top_k",
            "runtime_top_p": "top_p",
            "temperature": "temperature",
            "len_penalty": "length_penalty",
            "repetition_penalty": "repetition_penalty",
            "min_length": "min_length",
            "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty",
            "random_seed": "random_seed",
            "beam_width": "beam_width",
            "streaming": "stream",
        },
        {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"},
    ),
    (
        POSTPROCESSING,
        {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
        {"OUTPUT": "text_output"},
    ),
)


# Model configs -----------------------------------------------------------------------


def _parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _model(
    name: str,
    *,
    max_batch_size: int,
    inputs: tuple[Tensor, ...],
    outputs: tuple[Tensor, ...],
    backend: str | None = None,
    platform: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {"name": name}
    if backend:
        config["backend"] = backend
    if platform:
        config["platform"] = platform
    config["max_batch_size"] = max_batch_size
    config["input"] = [t.config() for t in inputs]
    config["output"] = [t.config() for t in outputs]
    config.update(extra)
    return config


def _cpu_instances(count: int) -> list[dict[str, Any]]:
    return [{"count": count, "kind": Symbol("KIND_CPU")}]


def preprocessing_config(
    spec: AlignedModelSpec, *, tokenizer_dir: str, engine_dir: str, options: TritonOptions
) -> dict[str, Any]:
    return _model(
        PREPROCESSING,
        backend="python",
        max_batch_size=spec.serving.max_batch_size,
        inputs=PREPROCESSING_INPUTS,
        outputs=PREPROCESSING_OUTPUTS,
        parameters=_parameters(
            {
                "tokenizer_dir": tokenizer_dir,
                "add_special_tokens": _flag(options.add_special_tokens),
                "visual_model_path": "",  # empty: not multimodal (model.py reads it)
                "gpt_model_path": engine_dir,
            }
        ),
        instance_group=_cpu_instances(options.preprocessing_instances),
    )


def postprocessing_config(
    spec: AlignedModelSpec, *, tokenizer_dir: str, options: TritonOptions
) -> dict[str, Any]:
    return _model(
        POSTPROCESSING,
        backend="python",
        max_batch_size=spec.serving.max_batch_size,
        inputs=POSTPROCESSING_INPUTS,
        outputs=POSTPROCESSING_OUTPUTS,
        parameters=_parameters(
            {
                "tokenizer_dir": tokenizer_dir,
                "skip_special_tokens": _flag(options.skip_special_tokens),
            }
        ),
        instance_group=_cpu_instances(options.postprocessing_instances),
    )


def tensorrt_llm_config(
    spec: AlignedModelSpec, *, engine_dir: str, options: TritonOptions
) -> dict[str, Any]:
    serving = spec.serving
    batching: dict[str, Any] = {
        "preferred_batch_size": [serving.max_batch_size],
        "max_queue_delay_microseconds": options.max_queue_delay_microseconds,
    }
    if options.max_queue_size:
        batching["default_queue_policy"] = {"max_queue_size": options.max_queue_size}
    parameters = {
        "max_beam_width": "1",
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": engine_dir,
        "batch_scheduler_policy": options.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": f"{options.kv_cache_free_gpu_mem_fraction:g}",
        "enable_kv_cache_reuse": _flag(options.kv_cache_reuse),
        "enable_chunked_context": _flag(options.chunked_context),
        "exclude_input_in_output": "true",  # text_output is the completion only
        "executor_worker_path": EXECUTOR_WORKER,
    }
    return _model(
        TENSORRT_LLM,
        backend="tensorrtllm",
        max_batch_size=serving.max_batch_size,
        inputs=TENSORRT_LLM_INPUTS,
        outputs=TENSORRT_LLM_OUTPUTS,
        model_transaction_policy={"decoupled": options.decoupled},
        dynamic_batching=batching,
        # The backend places the engine's ranks on GPUs itself; Triton sees a CPU model.
        instance_group=_cpu_instances(1),
        parameters=_parameters(parameters),
    )


def ensemble_config(spec: AlignedModelSpec) -> dict[str, Any]:
    steps = [
        {
            "model_name": model,
            "model_version": -1,
            "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
            "output_map": [{"key": k, "value": v} for k, v in outputs.items()],
        }
        for model, inputs, outputs in ENSEMBLE_STEPS
    ]
    return _model(
        ENSEMBLE,
        platform="ensemble",
        max_batch_size=spec.serving.max_batch_size,
        inputs=ENSEMBLE_INPUTS,
        outputs=ENSEMBLE_OUTPUTS,
        ensemble_scheduling={"step": steps},
    )


def bls_config(spec: AlignedModelSpec, *, options: TritonOptions) -> dict[str, Any]:
    """tensorrt_llm_bls: the same interface as the ensemble, as Python business logic.
    Its instances are what runs requests concurrently, hence one per batch slot (the
    backend's advice)."""
    return _model(
        BLS,
        backend="python",
        max_batch_size=spec.serving.max_batch_size,
        inputs=ENSEMBLE_INPUTS,
        outputs=ENSEMBLE_OUTPUTS,
        model_transaction_policy={"decoupled": options.decoupled},
        parameters=_parameters(
            {
                "accumulate_tokens": _flag(options.bls_accumulate_tokens),
                "tensorrt_llm_model_name": TENSORRT_LLM,
                "tensorrt_llm_draft_model_name": "",
            }
        ),
        instance_group=_cpu_instances(spec.serving.max_batch_size),
    )


def model_configs(
    spec: AlignedModelSpec,
    *,
    engine_dir: str,
    tokenizer_dir: str,
    options: TritonOptions | None = None,
) -> dict[str, dict[str, Any]]:
    """Every model of the repository by name, as ModelConfig-shaped dicts."""
    options = options or TritonOptions()
    configs = {
        PREPROCESSING: preprocessing_config(
            spec, tokenizer_dir=tokenizer_dir, engine_dir=engine_dir, options=options
        ),
        TENSORRT_LLM: tensorrt_llm_config(spec, engine_dir=engine_dir, options=options),
        POSTPROCESSING: postprocessing_config(spec, tokenizer_dir=tokenizer_dir, options=options),
        ENSEMBLE: ensemble_config(spec),
    }
    if options.bls:
        configs[BLS] = bls_config(spec, options=options)
    return configs


def render_model_repository(
    spec: AlignedModelSpec,
    *,
    engine_dir: str,
    tokenizer_dir: str,
    options: TritonOptions | None = None,
) -> dict[str, str]:
    """`<model>/config.pbtxt` path -> text, for every model of the repository."""
    configs = model_configs(
        spec, engine_dir=engine_dir, tokenizer_dir=tokenizer_dir, options=options
    )
    return {f"{name}/config.pbtxt": to_pbtxt(config) for name, config in configs.items()}


def config_map_key(path: str) -> str:
    """A repository path as a ConfigMap key (keys cannot hold '/')."""
    return path.replace("/", "__")


def repository_setup_script(
    files: dict[str, str], *, config_dir: str, repository: str, image_models: str
) -> str:
    """Shell for an init container of the Triton image: lay out the repository from the
    mounted ConfigMap (`config_dir`) and the image's own Python backend code
    (`image_models`, e.g. /app/all_models/inflight_batcher_llm), one version `1/` each."""
    lines = ["set -eu"]
    for path in sorted(files):
        model = path.split("/", 1)[0]
        target = f"{repository}/{model}"
        lines.append(f"mkdir -p {shlex.quote(f'{target}/{VERSION}')}")
        lines.append(
            f"cp {shlex.quote(f'{config_dir}/{config_map_key(path)}')}"
            f" {shlex.quote(f'{target}/config.pbtxt')}"
        )
        if model in (PREPROCESSING, POSTPROCESSING, BLS):
            source = shlex.quote(f"{image_models}/{model}/{VERSION}")
            lines.append(f"cp -r {source}/. {shlex.quote(f'{target}/{VERSION}')}/")
    return "\n".join(lines) + "\n"


# Processes ---------------------------------------------------------------------------


def triton_command(
    spec: AlignedModelSpec,
    *,
    repository: str,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
) -> tuple[list[str], dict[str, str]]:
    """tritonserver's argv and extra environment. Tensor-parallel engines run in the
    backend's orchestrator mode: one tritonserver, which spawns a worker per rank with
    MPI, so the pod needs no mpirun wrapper."""
    argv = [
        "tritonserver",
        f"--model-repository={repository}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--disable-auto-complete-config",
        "--backend-config=python,shm-region-prefix-name=prefix0_",
        "--log-verbose=0",
    ]
    env = {"TRTLLM_ORCHESTRATOR": "1"} if spec.serving.tensor_parallel > 1 else {}
    return argv, env


QUANTIZE_FORMAT = {"fp8": "fp8", "int4_awq": "int4_awq"}


def engine_build_commands(
    spec: AlignedModelSpec,
    *,
    model_dir: str,
    checkpoint_dir: str,
    engine_dir: str,
    examples_dir: str = "/app/tensorrt_llm/examples",
    family: str = "llama",
) -> list[list[str]]:
    """HF checkpoint -> TensorRT-LLM checkpoint -> engine, as argv lists.

    Without quantization the model family's `convert_checkpoint.py` splits the weights
    for tensor parallelism; with fp8 or int4_awq, ModelOpt's `quantize.py` calibrates and
    writes the quantized checkpoint (it handles every family). `trtllm-build` then
    compiles for the spec's batch and sequence limits.
    """
    serving = spec.serving
    tp = str(serving.tensor_parallel)
    if serving.quantization == "none":
        convert = [
            "python3", f"{examples_dir}/{family}/convert_checkpoint.py",
            "--model_dir", model_dir, "--output_dir", checkpoint_dir,
            "--dtype", serving.dtype, "--tp_size", tp,
        ]  # fmt: skip
    else:
        convert = [
            "python3", f"{examples_dir}/quantization/quantize.py",
            "--model_dir", model_dir, "--output_dir", checkpoint_dir,
            "--dtype", serving.dtype, "--qformat", QUANTIZE_FORMAT[serving.quantization],
            "--tp_size", tp,
        ]  # fmt: skip
        if serving.quantization == "fp8":
            convert += ["--kv_cache_dtype", "fp8", "--calib_size", "512"]
        else:
            convert += ["--awq_block_size", "128", "--calib_size", "32"]
    max_seq_len = serving.max_input_length + serving.max_output_length
    build = [
        "trtllm-build",
        "--checkpoint_dir", checkpoint_dir,
        "--output_dir", engine_dir,
        "--gemm_plugin", "auto",
        "--gpt_attention_plugin", "auto",
        "--max_batch_size", str(serving.max_batch_size),
        "--max_input_len", str(serving.max_input_length),
        "--max_seq_len", str(max_seq_len),
        "--max_num_tokens", str(max(8192, serving.max_input_length)),
        "--paged_kv_cache", "enable",
        "--remove_input_padding", "enable",
        "--use_paged_context_fmha", "enable",
        "--workers", tp,
    ]  # fmt: skip
    return [convert, build]


def engine_build_script(commands: list[list[str]]) -> str:
    """The commands as one shell script that stops at the first failure."""
    body = "\n".join(shlex.join(argv) for argv in commands)
    return f"set -euo pipefail\n{body}\n"


# Text format -------------------------------------------------------------------------


def to_pbtxt(message: dict[str, Any]) -> str:
    """A ModelConfig-shaped dict in protobuf text format. A list of dicts is a repeated
    message field (maps too: entries with `key` and `value`), a list of scalars a
    repeated scalar field, a Symbol an enum value."""
    return "".join(_fields(message, 0))


def _fields(message: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    lines = []
    for name, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{name} {{\n", *_fields(value, depth + 1), f"{pad}}}\n"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += [f"{pad}{name} {{\n", *_fields(item, depth + 1), f"{pad}}}\n"]
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [{', '.join(_scalar(v) for v in value)}]\n")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}\n")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    raise TypeError(f"cannot write {value!r} in text format")
