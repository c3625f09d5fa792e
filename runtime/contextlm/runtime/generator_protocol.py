"""The KServe v2 / Triton side of `contextlm generator`, free of any server framework.

The served model looks like TensorRT-LLM's `ensemble` (tensorrtllm_backend,
all_models/inflight_batcher_llm): batched (`max_batch_size` > 0) with `text_input`
BYTES [1] and `max_tokens` INT32 [1] required, sampling inputs optional, `text_output`
BYTES out. A client reads the same metadata from either engine and sends the same
tensors, full shape [batch, 1]. Checks follow Triton's: an unknown input, a wrong
datatype or a missing required input is the client's error (HTTP 400, gRPC
INVALID_ARGUMENT).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import GeneratorConfig
from .generator_engine import Sampling

SERVER_NAME = "contextlm-generator"
MODEL_VERSION = "1"
EXTENSIONS = ("binary_tensor_data", "generate", "model_configuration", "parameters")
DECOUPLED_HTTP = "HTTP end point doesn't support models with decoupled transaction policy"
DECOUPLED_GRPC = "ModelInfer RPC doesn't support models with decoupled transaction policy"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name; the model config says TYPE_<x> (BYTES is TYPE_STRING)
    dims: tuple[int, ...]
    optional: bool = False


INPUTS = (
    TensorSpec("text_input", "BYTES", (1,)),
    TensorSpec("max_tokens", "INT32", (1,)),
    TensorSpec("temperature", "FP32", (1,), optional=True),
    TensorSpec("top_k", "INT32", (1,), optional=True),
    TensorSpec("top_p", "FP32", (1,), optional=True),
    TensorSpec("random_seed", "UINT64", (1,), optional=True),
    TensorSpec("stream", "BOOL", (1,), optional=True),
)
OUTPUTS = (TensorSpec("text_output", "BYTES", (-1,)),)
INPUT_BY_NAME = {spec.name: spec for spec in INPUTS}


class InferError(Exception):
    """A request the generator answers with an error; `status` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class GenerateRequest:
    """A decoded inference request: one prompt per batch row."""

    prompts: list[str]
    sampling: list[Sampling]
    stream: bool
    batched_output: bool  # answer text_output as [batch, 1] (else [batch])


# Model description -------------------------------------------------------------------


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(config: GeneratorConfig) -> dict[str, Any]:
    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": [-1, *s.dims]} for s in specs]

    return {
        "name": config.model_name,
        "versions": [MODEL_VERSION],
        "platform": "transformers",
        "inputs": tensors(INPUTS),
        "outputs": tensors(OUTPUTS),
    }


def model_config(config: GeneratorConfig) -> Any:
    """The model's config as Triton's ModelConfig message (HTTP sends it as JSON)."""
    from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]

    def data_type(datatype: str) -> int:
        name = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
        value: int = model_config_pb2.DataType.Value(name)
        return value

    message = model_config_pb2.ModelConfig(
        name=config.model_name,
        backend="transformers",
        max_batch_size=config.max_batch_size,
        version_policy=model_config_pb2.ModelVersionPolicy(
            latest=model_config_pb2.ModelVersionPolicy.Latest(num_versions=1)
        ),
        model_transaction_policy=model_config_pb2.ModelTransactionPolicy(
            decoupled=config.decoupled
        ),
    )
    for spec in INPUTS:
        message.input.add(
            name=spec.name, data_type=data_type(spec.datatype), dims=spec.dims,
            optional=spec.optional,
        )  # fmt: skip
    for spec in OUTPUTS:
        message.output.add(name=spec.name, data_type=data_type(spec.datatype), dims=spec.dims)
    message.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    for key, value in (
        ("model", config.model),
        ("revision", config.revision),
        ("max_input_length", str(config.max_input_length)),
        ("max_output_length", str(config.max_output_length)),
        ("exclude_input_in_output", "true"),
    ):
        message.parameters[key].string_value = value
    return message


def model_config_json(config: GeneratorConfig) -> dict[str, Any]:
    """ModelConfig as Triton's HTTP endpoint writes it: proto field names, all fields."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped,unused-ignore]

    data: dict[str, Any] = MessageToDict(
        model_config(config),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    for tensor in (*data.get("input", []), *data.get("output", [])):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]  # int64 arrive as strings
    return data


# Tensors -----------------------------------------------------------------------------


def _triton_utils() -> Any:
    """tritonclient's tensor codecs: the client's own, so both ends agree byte for byte."""
    import tritonclient.utils  # type: ignore[import-untyped]

    return tritonclient.utils


def np_dtype(datatype: str) -> Any:
    dtype = _triton_utils().triton_to_np_dtype(datatype)
    if dtype is None:
        raise InferError(400, f"unsupported datatype {datatype}")
    return dtype


def from_raw(datatype: str, shape: list[int], raw: bytes) -> np.ndarray[Any, Any]:
    """A tensor from its binary form (KServe binary extension, gRPC raw contents)."""
    try:
        if datatype == "BYTES":
            array = _triton_utils().deserialize_bytes_tensor(raw)
        else:
            array = np.frombuffer(raw, dtype=np_dtype(datatype))
    except (struct.error, ValueError, TypeError, OverflowError) as exc:
        raise InferError(400, f"malformed binary data for a {datatype} tensor: {exc}") from exc
    return _shaped(array, shape)


def from_list(datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    """A tensor from JSON `data` or gRPC typed contents (possibly nested lists)."""
    flat = np.asarray(data, dtype=object).reshape(-1).tolist() if data is not None else []
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
        array = np.array(items, dtype=np.object_)
    else:
        try:
            array = np.array(flat, dtype=np_dtype(datatype))
        except (ValueError, TypeError, OverflowError) as exc:
            raise InferError(400, f"cannot read {datatype} data: {exc}") from exc
    return _shaped(array, shape)


def _shaped(array: np.ndarray[Any, Any], shape: list[int]) -> np.ndarray[Any, Any]:
    if any(d < 0 for d in shape) or int(np.prod(shape)) != array.size:
        raise InferError(
            400, f"tensor shape {shape} does not match its {array.size} element(s) of data"
        )
    return array.reshape(shape)


def to_raw(values: list[str]) -> bytes:
    """text_output in the binary form: each element as a 4-byte length plus UTF-8."""
    encoded = np.array([v.encode() for v in values], dtype=np.object_)
    serialized = _triton_utils().serialize_byte_tensor(encoded)  # a 0-d array of bytes
    raw: bytes = serialized.item() if serialized.size else b""
    return raw


# Requests ----------------------------------------------------------------------------


def check_input(name: str, datatype: str, model: str) -> None:
    spec = INPUT_BY_NAME.get(name)
    if spec is None:
        raise InferError(400, f"unexpected inference input '{name}' for model '{model}'")
    if datatype != spec.datatype:
        raise InferError(
            400,
            f"unexpected datatype {datatype} for inference input '{name}',"
            f" expecting {spec.datatype}",
        )


def check_outputs(names: list[str], model: str) -> None:
    known = {spec.name for spec in OUTPUTS}
    for name in names:
        if name not in known:
            raise InferError(400, f"unexpected inference output '{name}' for model '{model}'")


def to_request(
    tensors: dict[str, np.ndarray[Any, Any]], config: GeneratorConfig
) -> GenerateRequest:
    """Validate the decoded inputs against the model and turn them into prompts."""
    for spec in INPUTS:
        if not spec.optional and spec.name not in tensors:
            raise InferError(
                400, f"expected inference input '{spec.name}' for model '{config.model_name}'"
            )
    text = tensors["text_input"]
    batch = int(text.shape[0]) if text.ndim else 1
    if text.size != batch or batch < 1:
        raise InferError(400, f"text_input must have shape [batch, 1], got {list(text.shape)}")
    if batch > config.max_batch_size:
        raise InferError(
            400, f"batch size {batch} exceeds the model's max_batch_size {config.max_batch_size}"
        )
    prompts = []
    for item in text.reshape(-1):
        try:
            prompts.append(bytes(item).decode())
        except UnicodeDecodeError as exc:
            raise InferError(400, f"text_input is not UTF-8: {exc}") from exc

    def column(name: str) -> list[Any] | None:
        if name not in tensors:
            return None
        values = tensors[name].reshape(-1).tolist()
        if len(values) == 1:
            return values * batch
        if len(values) != batch:
            raise InferError(400, f"{name} has {len(values)} values for a batch of {batch}")
        return values

    max_tokens = column("max_tokens") or []
    temperature = column("temperature") or [0.0] * batch
    top_k = column("top_k") or [0] * batch
    top_p = column("top_p") or [0.0] * batch
    seeds: list[Any] = column("random_seed") or [None] * batch
    stream = any(column("stream") or [False])
    sampling = [
        _sampling(config, int(n), float(t), int(k), float(p), s)
        for n, t, k, p, s in zip(max_tokens, temperature, top_k, top_p, seeds, strict=True)
    ]
    if stream and batch != 1:
        raise InferError(400, "streaming answers one prompt per request: send a batch of 1")
    return GenerateRequest(prompts, sampling, stream, batched_output=text.ndim > 1)


def _sampling(
    config: GeneratorConfig, max_tokens: int, temperature: float, top_k: int, top_p: float,
    seed: int | None,
) -> Sampling:  # fmt: skip
    if not 1 <= max_tokens <= config.max_output_length:
        raise InferError(
            400, f"max_tokens must be between 1 and {config.max_output_length}, got {max_tokens}"
        )
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise InferError(400, f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise InferError(400, f"top_k must be >= 0, got {top_k}")
    if not 0 <= top_p <= 1:
        raise InferError(400, f"top_p must be between 0 and 1, got {top_p}")
    return Sampling(max_tokens, temperature, top_k, top_p, None if seed is None else int(seed))


def generate_tensors(body: Any, model: str) -> dict[str, np.ndarray[Any, Any]]:
    """Triton's generate extension: top-level JSON fields are the inputs by name (a
    scalar or a list for one batch row), `parameters` carries request parameters."""
    if not isinstance(body, dict):
        raise InferError(400, "the generate request body must be a JSON object")
    tensors = {}
    for name, value in body.items():
        if name in ("id", "parameters"):
            continue
        spec = INPUT_BY_NAME.get(name)
        if spec is None:
            raise InferError(400, f"unexpected inference input '{name}' for model '{model}'")
        values = value if isinstance(value, list) else [value]
        if spec.datatype == "BYTES" and not all(isinstance(v, str) for v in values):
            raise InferError(400, f"{name} must be a string")
        if spec.datatype == "BOOL" and not all(isinstance(v, bool) for v in values):
            raise InferError(400, f"{name} must be a boolean")
        if spec.datatype != "BYTES" and not all(isinstance(v, int | float) for v in values):
            raise InferError(400, f"{name} must be a number")
        tensors[name] = from_list(spec.datatype, [1, len(values)], values)
    return tensors
