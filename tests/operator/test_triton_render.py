"""The Triton model repository and engine build rendered for `engine: tensorrt-llm`.

Every config.pbtxt must parse into the ModelConfig protobuf that tritonclient ships
(what tritonserver itself reads), and the ensemble must wire tensors that exist, with
matching types, through models whose batch limits agree."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from contextlm.api.aligned_model import AlignedModelSpec
from contextlm.runtime.config import GeneratorConfig
from contextlm.runtime.generator_protocol import model_metadata
from contextlm_operator.render.triton import (
    BLS,
    ENSEMBLE,
    TENSORRT_LLM,
    TritonOptions,
    config_map_key,
    engine_build_commands,
    engine_build_script,
    render_model_repository,
    repository_setup_script,
    to_pbtxt,
    triton_command,
)

ENGINE_DIR = "/models/engines/llama-3-8b/abc123"
TOKENIZER_DIR = "/models/hf/llama-3-8b/abc123"
ModelConfig = model_config_pb2.ModelConfig


def spec(**serving: Any) -> AlignedModelSpec:
    return AlignedModelSpec.model_validate(
        {
            "base": {"model": "models/llama-3-8b-instruct"},
            "serving": {"engine": "tensorrt-llm", "gpus": 1, **serving},
        }
    )


SPECS = {
    "default": spec(),
    "fp8-tp2": spec(gpus=2, tensorParallel=2, quantization="fp8", maxBatchSize=64),
    "int4-awq-mig": spec(gpus=None, migProfile="3g.40gb", quantization="int4_awq"),
}
OPTIONS = {
    "default": TritonOptions(),
    "bls-not-decoupled": TritonOptions(bls=True, decoupled=False, max_queue_size=128),
}


def parse(files: dict[str, str]) -> dict[str, Any]:
    return {
        path.split("/")[0]: text_format.Parse(text, ModelConfig()) for path, text in files.items()
    }


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("served", SPECS.values(), ids=list(SPECS))
def test_every_config_parses_into_triton_model_config(
    served: AlignedModelSpec, options: TritonOptions
) -> None:
    files = render_model_repository(
        served, engine_dir=ENGINE_DIR, tokenizer_dir=TOKENIZER_DIR, options=options
    )
    expected = {"preprocessing", "tensorrt_llm", "postprocessing", "ensemble"}
    assert {p.split("/")[0] for p in files} == expected | ({BLS} if options.bls else set())
    for path, text in files.items():
        assert path.endswith("/config.pbtxt")
        config = text_format.Parse(text, ModelConfig())  # raises on any unknown field
        assert config.name == path.split("/")[0]
        assert text_format.Parse(text_format.MessageToString(config), ModelConfig()) == config


@pytest.mark.parametrize("served", SPECS.values(), ids=list(SPECS))
def test_the_ensemble_wires_tensors_that_exist(served: AlignedModelSpec) -> None:
    models = parse(
        render_model_repository(served, engine_dir=ENGINE_DIR, tokenizer_dir=TOKENIZER_DIR)
    )
    ensemble = models.pop(ENSEMBLE)
    available = {t.name: t.data_type for t in ensemble.input}
    consumed: set[str] = set()
    for step in ensemble.ensemble_scheduling.step:
        model = models[step.model_name]
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for key, tensor in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert tensor in available, f"{tensor} is used before any step produces it"
            assert available[tensor] == inputs[key].data_type, f"{tensor} -> {key}"
            consumed.add(tensor)
        required = {name for name, t in inputs.items() if not t.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required}"
        for key, tensor in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            assert tensor not in available, f"{tensor} is produced twice"
            available[tensor] = outputs[key].data_type
    assert {t.name for t in ensemble.input} <= consumed, "an ensemble input is never used"
    for output in ensemble.output:
        assert available.get(output.name) == output.data_type


@pytest.mark.parametrize("served", SPECS.values(), ids=list(SPECS))
def test_batch_limits_agree_with_the_spec(served: AlignedModelSpec) -> None:
    models = parse(
        render_model_repository(
            served,
            engine_dir=ENGINE_DIR,
            tokenizer_dir=TOKENIZER_DIR,
            options=TritonOptions(bls=True),
        )
    )
    assert {m.max_batch_size for m in models.values()} == {served.serving.max_batch_size}
    trtllm = models[TENSORRT_LLM]
    assert list(trtllm.dynamic_batching.preferred_batch_size) == [served.serving.max_batch_size]
    assert models[BLS].instance_group[0].count == served.serving.max_batch_size


def test_engine_tokenizer_and_serving_options_land_where_the_backend_reads_them() -> None:
    models = parse(
        render_model_repository(
            SPECS["default"],
            engine_dir=ENGINE_DIR,
            tokenizer_dir=TOKENIZER_DIR,
            options=TritonOptions(kv_cache_free_gpu_mem_fraction=0.85, max_queue_size=256),
        )
    )

    def params(name: str) -> dict[str, str]:
        return {k: v.string_value for k, v in models[name].parameters.items()}

    trtllm = params(TENSORRT_LLM)
    assert trtllm["gpt_model_path"] == ENGINE_DIR
    assert trtllm["gpt_model_type"] == "inflight_fused_batching"
    assert trtllm["kv_cache_free_gpu_mem_fraction"] == "0.85"
    assert trtllm["exclude_input_in_output"] == "true"
    assert models[TENSORRT_LLM].model_transaction_policy.decoupled
    assert models[TENSORRT_LLM].dynamic_batching.default_queue_policy.max_queue_size == 256
    assert models[TENSORRT_LLM].backend == "tensorrtllm"
    for name in ("preprocessing", "postprocessing"):
        assert params(name)["tokenizer_dir"] == TOKENIZER_DIR
        assert models[name].backend == "python"
    assert models[ENSEMBLE].platform == "ensemble"


def test_clients_see_the_same_interface_as_the_cpu_generator() -> None:
    """The gateway's one code path: every tensor the CPU generator takes, the ensemble
    takes with the same name, type and shape (BYTES is TYPE_STRING in a config)."""
    ensemble = parse(
        render_model_repository(SPECS["default"], engine_dir=ENGINE_DIR, tokenizer_dir="/t")
    )[ENSEMBLE]

    def triton(tensors: Any) -> dict[str, tuple[str, list[int]]]:
        return {
            t.name: (model_config_pb2.DataType.Name(t.data_type), [-1, *t.dims]) for t in tensors
        }

    def generator(tensors: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
        kind = {"BYTES": "TYPE_STRING"}
        return {
            t["name"]: (kind.get(t["datatype"], f"TYPE_{t['datatype']}"), t["shape"])
            for t in tensors
        }

    cpu = model_metadata(GeneratorConfig(model="x"))
    gpu_inputs = triton(ensemble.input)
    for name, signature in generator(cpu["inputs"]).items():
        assert gpu_inputs[name] == signature, name
    assert generator(cpu["outputs"]) == triton(ensemble.output)
    assert {t.name for t in ensemble.input if not t.optional} == {"text_input", "max_tokens"}


def test_engine_build_follows_the_spec() -> None:
    plain, build = engine_build_commands(
        SPECS["default"], model_dir="/hf", checkpoint_dir="/ckpt", engine_dir="/engine"
    )
    assert plain[1].endswith("/llama/convert_checkpoint.py")
    assert plain[plain.index("--dtype") + 1] == "bfloat16"
    flags = dict(zip(build[1::2], build[2::2], strict=False))
    assert flags["--max_seq_len"] == str(4096 + 512)
    assert flags["--max_batch_size"] == "8" and flags["--max_input_len"] == "4096"
    assert flags["--use_paged_context_fmha"] == "enable"  # KV cache reuse needs it

    quantized, build = engine_build_commands(
        SPECS["fp8-tp2"], model_dir="/hf", checkpoint_dir="/ckpt", engine_dir="/engine"
    )
    assert quantized[1].endswith("/quantization/quantize.py")
    assert quantized[quantized.index("--qformat") + 1] == "fp8"
    assert quantized[quantized.index("--tp_size") + 1] == "2"
    assert build[build.index("--workers") + 1] == "2"
    awq, _ = engine_build_commands(
        SPECS["int4-awq-mig"], model_dir="/hf", checkpoint_dir="/c", engine_dir="/e"
    )
    assert awq[awq.index("--qformat") + 1] == "int4_awq"


def test_triton_runs_tensor_parallel_engines_in_orchestrator_mode() -> None:
    argv, env = triton_command(SPECS["default"], repository="/models/repo")
    assert argv[0] == "tritonserver" and "--model-repository=/models/repo" in argv
    assert env == {}
    _, env = triton_command(SPECS["fp8-tp2"], repository="/models/repo")
    assert env == {"TRTLLM_ORCHESTRATOR": "1"}


def test_strings_survive_the_text_format() -> None:
    odd = 'C:\\weird "dir"\nline'
    text = to_pbtxt({"name": "m", "parameters": [{"key": "k", "value": {"string_value": odd}}]})
    assert text_format.Parse(text, ModelConfig()).parameters["k"].string_value == odd


def test_repository_and_engine_build_match_golden(golden: Any) -> None:
    served = SPECS["fp8-tp2"]
    files = render_model_repository(
        served, engine_dir=ENGINE_DIR, tokenizer_dir=TOKENIZER_DIR, options=TritonOptions(bls=True)
    )
    golden("triton-model-repository", {path: text.splitlines() for path, text in files.items()})
    setup = repository_setup_script(
        files,
        config_dir="/etc/contextlm/triton",
        repository="/models/repository",
        image_models="/app/all_models/inflight_batcher_llm",
    )
    commands = engine_build_commands(
        served, model_dir="/models/hf", checkpoint_dir="/work/ckpt", engine_dir=ENGINE_DIR
    )
    golden(
        "triton-engine-build",
        {
            "setup": setup.splitlines(),
            "build": engine_build_script(commands).splitlines(),
            "config_map_keys": sorted(config_map_key(p) for p in files),
        },
    )
