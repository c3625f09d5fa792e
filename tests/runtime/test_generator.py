"""`contextlm generator` as a real process, driven by the real `tritonclient` (HTTP with
its default binary tensors, gRPC unary and ModelStreamInfer) exactly as the gateway
drives Triton with TensorRT-LLM. The model is a tiny random Llama built by the test."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from generator_helpers import GeneratorProcess, build_tiny_llama, run_generator, termination_reason
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration

MODEL = "ensemble"
PROMPT = "The operator renders a model repository"


@dataclass
class Startup:
    """What the server answered after it was live but before the model was loaded."""

    http_ready: bool
    grpc_ready: bool
    model_ready: bool
    infer_error: str


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def started(tiny_model: Path) -> Iterator[tuple[GeneratorProcess, Startup]]:
    with run_generator(tiny_model) as server:
        server.wait_live()
        http = httpclient.InferenceServerClient(server.http)
        grpc = grpcclient.InferenceServerClient(server.grpc)
        try:
            http.infer(MODEL, inputs(PROMPT, 4, httpclient))
            error = ""
        except InferenceServerException as exc:
            error = f"{exc.status()} {exc.message()}"
        startup = Startup(
            http.is_server_ready(), grpc.is_server_ready(), grpc.is_model_ready(MODEL), error
        )
        server.wait_ready()
        yield server, startup


@pytest.fixture(scope="module")
def server(started: tuple[GeneratorProcess, Startup]) -> GeneratorProcess:
    return started[0]


@pytest.fixture
def http(server: GeneratorProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http)


@pytest.fixture
def grpc(server: GeneratorProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


def inputs(prompt: str | list[str], max_tokens: int, module: Any, **extra: Any) -> list[Any]:
    """The tensors a client sends TensorRT-LLM's ensemble: shape [batch, 1]."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    values: dict[str, tuple[str, Any]] = {
        "text_input": ("BYTES", np.array([[p.encode()] for p in prompts], dtype=np.object_)),
        "max_tokens": ("INT32", np.array([[max_tokens]] * len(prompts), dtype=np.int32)),
    }
    kinds = {"temperature": ("FP32", np.float32), "random_seed": ("UINT64", np.uint64)}
    kinds |= {"stream": ("BOOL", np.bool_), "top_k": ("INT32", np.int32)}
    for name, value in extra.items():
        datatype, dtype = kinds[name]
        values[name] = (datatype, np.array([[value]] * len(prompts), dtype=dtype))
    tensors = []
    for name, (datatype, array) in values.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def texts(result: Any) -> list[str]:
    values = result.as_numpy("text_output").reshape(-1)  # bytes, or str from JSON
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def stream(
    client: grpcclient.InferenceServerClient,
    requests: list[dict[str, Any]],
    *,
    failing: int = 0,
    **kwargs: Any,
) -> dict[str, list[Any]]:
    """Send requests on one ModelStreamInfer stream and collect the responses by id
    (text or None, final flag) until each has its final one; `failing` requests are
    expected to be answered by an error instead (kept under "errors": errors carry no id)."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request in requests:
            client.async_stream_infer(MODEL, **request, **kwargs)
        got: dict[str, list[Any]] = {r["request_id"]: [] for r in requests}
        got["errors"] = []
        finished = 0
        while finished < len(requests):
            result, error = answers.get(timeout=120)
            if error is not None:
                got["errors"].append(error.message())
                finished += 1
                continue
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            output = result.as_numpy("text_output")
            text = None if output is None else bytes(output.reshape(-1)[0]).decode()
            got[response.id].append((text, final))
            finished += final
        assert len(got["errors"]) == failing, got["errors"]
        return got
    finally:
        client.stop_stream()


# Startup and health ------------------------------------------------------------------


def test_not_ready_until_the_model_is_loaded(started: tuple[GeneratorProcess, Startup]) -> None:
    _, startup = started
    assert not startup.http_ready and not startup.grpc_ready and not startup.model_ready
    assert startup.infer_error.startswith("503 model 'ensemble' is not ready")


def test_health_and_readiness(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(MODEL)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(MODEL)
    assert not http.is_model_ready("other") and not grpc.is_model_ready("other")
    assert http.get_server_metadata()["name"] == "contextlm-generator"
    assert "generate" in grpc.get_server_metadata(as_json=True)["extensions"]
    ready = [{"name": MODEL, "version": "1", "state": "READY"}]
    assert http.get_model_repository_index() == ready
    assert grpc.get_model_repository_index(as_json=True)["models"] == ready
    with pytest.raises(InferenceServerException, match="not supported") as caught:
        grpc.get_inference_statistics(MODEL)
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_metadata_and_config_match_over_both_protocols(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    over_http = http.get_model_metadata(MODEL)
    over_grpc = grpc.get_model_metadata(MODEL, as_json=True)
    tensors = {
        i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in over_grpc["inputs"]
    }
    assert tensors == {i["name"]: (i["datatype"], i["shape"]) for i in over_http["inputs"]}
    assert tensors["text_input"] == ("BYTES", [-1, 1])
    assert tensors["max_tokens"] == ("INT32", [-1, 1])
    assert [o["name"] for o in over_http["outputs"]] == ["text_output"]
    config = grpc.get_model_config(MODEL).config
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert config.max_batch_size == 8 and not config.model_transaction_policy.decoupled
    assert http.get_model_config(MODEL)["max_batch_size"] == 8
    with pytest.raises(InferenceServerException, match="unknown model"):
        http.get_model_metadata("other")
    with pytest.raises(InferenceServerException, match="unknown model"):
        grpc.get_model_metadata("other")


# Inference ---------------------------------------------------------------------------


def test_infer_over_http_and_grpc_agree(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    binary = texts(http.infer(MODEL, inputs(PROMPT, 12, httpclient)))  # the client's default
    as_json = http.infer(
        MODEL,
        inputs(PROMPT, 12, httpclient),
        outputs=[httpclient.InferRequestedOutput("text_output", binary_data=False)],
    )
    over_grpc = grpc.infer(MODEL, inputs(PROMPT, 12, grpcclient))
    assert binary == texts(as_json) == texts(over_grpc)
    assert len(binary) == 1 and binary[0]
    assert over_grpc.as_numpy("text_output").shape == (1, 1)


def test_a_batch_answers_each_row_as_if_alone(http: httpclient.InferenceServerClient) -> None:
    prompts = [PROMPT, "Feedback trains the next revision"]
    batch = texts(http.infer(MODEL, inputs(prompts, 8, httpclient)))
    assert batch == [texts(http.infer(MODEL, inputs(p, 8, httpclient)))[0] for p in prompts]


def test_sampling_is_reproducible_with_a_seed(grpc: grpcclient.InferenceServerClient) -> None:
    def sample(seed: int) -> str:
        extra = {"temperature": 1.5, "random_seed": seed}
        return texts(grpc.infer(MODEL, inputs(PROMPT, 12, grpcclient, **extra)))[0]

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_grpc_stream_yields_chunks_that_add_up_to_the_greedy_answer(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    whole = texts(grpc.infer(MODEL, inputs(PROMPT, 24, grpcclient)))[0]
    got = stream(
        grpc, [{"inputs": inputs(PROMPT, 24, grpcclient, stream=True), "request_id": "a"}]
    )["a"]
    assert len(got) >= 3, got
    assert "".join(text for text, _ in got) == whole
    assert [final for _, final in got] == [False] * (len(got) - 1) + [True]


def test_concurrent_requests_on_one_stream_and_the_empty_final_response(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    prompts = {"one": PROMPT, "two": "Citations map each number to a chunk"}
    expected = {
        k: texts(grpc.infer(MODEL, inputs(p, 16, grpcclient)))[0] for k, p in prompts.items()
    }
    requests = [
        {"inputs": inputs(p, 16, grpcclient, stream=True), "request_id": k}
        for k, p in prompts.items()
    ]
    got = stream(grpc, requests, enable_empty_final_response=True)
    for key in prompts:
        responses = got[key]
        assert responses[-1] == (None, True)  # the empty final response
        assert all(not final for _, final in responses[:-1])
        assert "".join(text for text, _ in responses[:-1]) == expected[key]


def test_a_non_streaming_request_on_the_stream_is_one_final_response(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    whole = texts(grpc.infer(MODEL, inputs(PROMPT, 10, grpcclient)))[0]
    got = stream(grpc, [{"inputs": inputs(PROMPT, 10, grpcclient), "request_id": "x"}])
    assert got["x"] == [(whole, True)]


def test_generate_and_generate_stream(server: GeneratorProcess) -> None:
    body = {"text_input": PROMPT, "max_tokens": 12}
    whole = post(server, "generate", body)
    assert whole["model_name"] == MODEL
    events = sse(server, {**body, "stream": True})
    assert len(events) >= 2
    assert "".join(e["text_output"] for e in events) == whole["text_output"]


def post(server: GeneratorProcess, route: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"http://{server.http}/v2/models/{MODEL}/{route}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def sse(server: GeneratorProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    url = f"http://{server.http}/v2/models/{MODEL}/generate_stream"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.read().decode().split("\n\n")
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.strip()]


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: inputs(PROMPT, 10_000, m), "max_tokens must be between 1 and 64"),
        (lambda m: inputs(PROMPT, 4, m)[:1], "expected inference input 'max_tokens'"),
        (lambda m: inputs("word " * 400, 4, m), "more than max_input_length 256"),
        (
            lambda m: [*inputs(PROMPT, 4, m), _tensor(m, "prompt", "BYTES", [[b"x"]])],
            "unexpected inference input 'prompt'",
        ),
        (
            lambda m: [inputs(PROMPT, 4, m)[0], _tensor(m, "max_tokens", "INT64", [[4]])],
            "unexpected datatype INT64 for inference input 'max_tokens', expecting INT32",
        ),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    build: Any,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException, match=message) as over_http:
        http.infer(MODEL, build(httpclient))
    assert over_http.value.status() == "400"
    with pytest.raises(InferenceServerException, match=message) as over_grpc:
        grpc.infer(MODEL, build(grpcclient))
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"


def _tensor(module: Any, name: str, datatype: str, value: Any) -> Any:
    array = np.array(value, dtype=np.object_ if datatype == "BYTES" else np.int64)
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_an_error_on_the_stream_answers_that_request_only(
    grpc: grpcclient.InferenceServerClient,
) -> None:
    requests = [
        {"inputs": inputs(PROMPT, 10_000, grpcclient, stream=True), "request_id": "bad"},
        {"inputs": inputs(PROMPT, 6, grpcclient, stream=True), "request_id": "good"},
    ]
    got = stream(grpc, requests, failing=1)
    assert "max_tokens must be between 1 and 64" in got["errors"][0]
    assert got["bad"] == []
    assert got["good"] and got["good"][-1][1] is True


def test_unknown_model_is_not_found(http: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model: 'other'") as caught:
        http.infer("other", inputs(PROMPT, 4, httpclient))
    assert caught.value.status() == "404"


# Metrics -----------------------------------------------------------------------------


def test_metrics_count_requests_and_tokens(
    server: GeneratorProcess, http: httpclient.InferenceServerClient
) -> None:
    http.infer(MODEL, inputs(PROMPT, 5, httpclient))
    status, body = server.get("/metrics")
    text = body.decode()
    assert status == 200
    assert 'contextlm_generator_requests_total{kind="infer",outcome="ok",protocol="http"}' in text
    assert 'contextlm_generator_requests_total{kind="infer",outcome="invalid"' in text
    assert "contextlm_generator_request_duration_seconds_bucket" in text
    completion = _sample(text, 'contextlm_generator_tokens_total{kind="completion"}')
    prompt = _sample(text, 'contextlm_generator_tokens_total{kind="prompt"}')
    assert completion >= 5 and prompt > completion
    assert 'contextlm_generator_model_info{model="' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `e2e/cluster/build apt` (Debian's prometheus)"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics")


# Other modes of the process ----------------------------------------------------------


def test_decoupled_mode_behaves_like_triton_with_streaming_on(tiny_model: Path) -> None:
    """What the gateway meets on GPUs: unary infer refused, the stream answers."""
    with run_generator(tiny_model, decoupled=True) as server:
        server.wait_ready()
        http = httpclient.InferenceServerClient(server.http)
        grpc = grpcclient.InferenceServerClient(server.grpc)
        assert http.get_model_config(MODEL)["model_transaction_policy"]["decoupled"] is True
        with pytest.raises(InferenceServerException, match="decoupled transaction policy"):
            http.infer(MODEL, inputs(PROMPT, 4, httpclient))
        with pytest.raises(InferenceServerException, match="decoupled transaction policy"):
            grpc.infer(MODEL, inputs(PROMPT, 4, grpcclient))
        got = stream(grpc, [{"inputs": inputs(PROMPT, 8, grpcclient), "request_id": "1"}])
        assert len(got["1"]) == 1 and got["1"][0][1] is True
        grpc.close()


def test_a_model_that_cannot_load_ends_the_process_with_a_reason(tmp_path: Path) -> None:
    with run_generator(tmp_path / "no-such-model") as server:
        assert server.process.wait(timeout=300) == 1
        reason = termination_reason(server)
    assert reason["error"] == "ModelNotFound" and "no-such-model" in reason["reason"]
