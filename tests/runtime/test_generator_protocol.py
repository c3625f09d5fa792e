"""`contextlm generator`'s protocol layer without a server: tensor codecs, request
checks, the model description, and the incremental detokenizer streaming relies on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from generator_helpers import CORPUS, build_tiny_tokenizer
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import serialize_byte_tensor

from contextlm.runtime.config import GeneratorConfig
from contextlm.runtime.generator_engine import IncrementalText
from contextlm.runtime.generator_protocol import (
    InferError,
    check_input,
    from_list,
    from_raw,
    generate_tensors,
    model_config,
    model_config_json,
    model_metadata,
    to_raw,
    to_request,
)

CONFIG = GeneratorConfig(model="tiny", max_batch_size=4, max_output_length=64)


def _byte_tokens() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the token that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + i) for i, b in enumerate(others)},
    }


BYTE_TOKENS = _byte_tokens()


def tensors(**values: Any) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {}
    types = {"text_input": np.object_, "max_tokens": np.int32, "temperature": np.float32}
    for name, value in values.items():
        out[name] = np.array(value, dtype=types.get(name, np.object_))
    return out


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def test_bytes_tensors_round_trip_through_the_clients_codec() -> None:
    texts = ["", "plain", "naïve 東京 🙂"]
    raw = to_raw(texts)
    assert raw == serialize_byte_tensor(np.array([t.encode() for t in texts], object)).item()
    decoded = from_raw("BYTES", [3, 1], raw)
    assert decoded.shape == (3, 1)
    assert [bytes(b).decode() for b in decoded.reshape(-1)] == texts


def test_numeric_tensors_from_binary_and_json_agree() -> None:
    raw = np.array([[7], [9]], dtype=np.int32).tobytes()
    assert from_raw("INT32", [2, 1], raw).tolist() == [[7], [9]]
    assert from_list("INT32", [2, 1], [[7], [9]]).tolist() == [[7], [9]]


def test_shape_must_match_the_data() -> None:
    with pytest.raises(InferError, match="does not match"):
        from_list("INT32", [2, 1], [1, 2, 3])
    with pytest.raises(InferError, match="malformed binary"):
        from_raw("BYTES", [1], b"\xff\x00\x00\x00abc")


def test_inputs_are_checked_by_name_and_datatype() -> None:
    check_input("text_input", "BYTES", "ensemble")
    with pytest.raises(InferError, match="unexpected inference input 'prompt'"):
        check_input("prompt", "BYTES", "ensemble")
    with pytest.raises(InferError, match="unexpected datatype INT64 .* expecting INT32"):
        check_input("max_tokens", "INT64", "ensemble")


def test_a_request_becomes_prompts_and_sampling() -> None:
    ask = to_request(
        tensors(text_input=[[b"a"], [b"b"]], max_tokens=[[4]], temperature=[[0.5], [0.0]]),
        CONFIG,
    )
    assert ask.prompts == ["a", "b"]
    assert [s.max_tokens for s in ask.sampling] == [4, 4]  # one value serves the batch
    assert [s.temperature for s in ask.sampling] == [0.5, 0.0]
    assert ask.batched_output and not ask.stream


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"text_input": [[b"a"]]}, "expected inference input 'max_tokens'"),
        ({"text_input": [[b"a"]], "max_tokens": [[0]]}, "max_tokens must be between 1 and 64"),
        ({"text_input": [[b"a"]], "max_tokens": [[65]]}, "max_tokens must be between 1 and 64"),
        ({"text_input": [[b"\xff"]], "max_tokens": [[1]]}, "not UTF-8"),
        ({"text_input": [[b"a"]] * 5, "max_tokens": [[1]]}, "exceeds the model's max_batch_size"),
        ({"text_input": [[b"a"]], "max_tokens": [[1]], "temperature": [[-1.0]]}, "temperature"),
        ({"text_input": [[b"a"]] * 2, "max_tokens": [[1], [2], [3]]}, "3 values for a batch"),
    ],
)
def test_bad_requests_are_the_clients_error(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InferError, match=message) as caught:
        to_request(tensors(**values), CONFIG)
    assert caught.value.status == 400


def test_generate_extension_fields_are_inputs() -> None:
    found = generate_tensors({"text_input": "hi", "max_tokens": 3, "stream": True}, "ensemble")
    ask = to_request(found, CONFIG)
    assert ask.prompts == ["hi"] and ask.sampling[0].max_tokens == 3 and ask.stream
    with pytest.raises(InferError, match="unexpected inference input 'prompt'"):
        generate_tensors({"prompt": "hi"}, "ensemble")
    with pytest.raises(InferError, match="max_tokens must be a number"):
        generate_tensors({"text_input": "hi", "max_tokens": "3"}, "ensemble")


def test_the_model_looks_like_the_tensorrt_llm_ensemble() -> None:
    metadata = model_metadata(CONFIG)
    shapes = {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]}
    assert shapes["text_input"] == ("BYTES", [-1, 1])
    assert shapes["max_tokens"] == ("INT32", [-1, 1])
    assert metadata["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [-1, -1]}]
    config = model_config(CONFIG)
    parsed = text_format.Parse(text_format.MessageToString(config), model_config_pb2.ModelConfig())
    assert parsed == config and config.max_batch_size == 4
    assert {i.name for i in config.input if not i.optional} == {"text_input", "max_tokens"}
    data = model_config_json(CONFIG)
    assert data["model_transaction_policy"] == {"decoupled": False}
    assert data["input"][0]["dims"] == [1]


def test_streamed_text_adds_up_to_the_whole_decode(tokenizer: Any) -> None:
    ids = tokenizer("".join(CORPUS), add_special_tokens=False)["input_ids"]
    # "東京 🙂" one byte per token: each character spans several tokens.
    ids += tokenizer.convert_tokens_to_ids([BYTE_TOKENS[b] for b in "東京 🙂".encode()])
    text = IncrementalText(tokenizer)
    pieces = [text.push(token) for token in ids] + [text.finish()]
    whole = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "".join(pieces) == whole
    assert not any(p.endswith("\ufffd") for p in pieces)  # never half a character
    assert sum(1 for p in pieces if p) > 10
