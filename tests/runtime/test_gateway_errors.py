"""`contextlm gateway` as a real process with the embedded SQLite store and its upstreams
down: the API key, input checks, feedback status codes, errors that tell the client to
retry, readiness and metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from feedback_helpers import answer
from gateway_helpers import MINILM, GatewayProcess, deployment_spec
from servers import free_port

from contextlm.runtime.config import GatewayConfig
from contextlm.runtime.feedback.store import FeedbackStore, sqlite_dsn

pytestmark = pytest.mark.integration
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("gateway-errors")
    config = GatewayConfig(
        namespace="team",
        deployment="docs",
        spec=deployment_spec(backend="sqlite"),
        retriever_url=f"http://127.0.0.1:{free_port()}",
        generator_url=f"http://127.0.0.1:{free_port()}",
        generator_grpc=f"127.0.0.1:{free_port()}",
        tokenizer=MINILM,
        sqlite_path=str(work / "db" / "feedback.db"),
    )
    process = GatewayProcess(config, work / "gateway", api_key=KEY)
    try:
        process.wait()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def store(gateway: GatewayProcess) -> Iterator[FeedbackStore]:
    """The gateway's own SQLite file (migrated by the gateway at start)."""
    path = gateway.log_path.parent.parent / "db" / "feedback.db"
    store = FeedbackStore.open(sqlite_dsn(str(path)), deployment="team/docs", pool_size=1)
    yield store
    store.close()


def test_the_api_key_is_required_on_v1_routes(gateway: GatewayProcess) -> None:
    for path in ("/v1/query", "/v1/chat/completions", "/v1/feedback"):
        for given in ("", "Bearer wrong", KEY, f"Basic {KEY}", f"Bearer {KEY}x"):
            status, head, body = gateway.call("POST", path, {}, headers={"Authorization": given})
            assert status == 401, (path, given, body)
            assert head["WWW-Authenticate"].startswith("Bearer")
    status, _, _ = gateway.call("POST", "/v1/query", {"question": ""})
    assert status == 400  # with the key, the request reaches validation
    for path in ("/healthz", "/metrics"):
        assert gateway.call("GET", path, headers={"Authorization": ""})[0] == 200


def test_upstreams_down_means_503_with_retry_after(gateway: GatewayProcess) -> None:
    status, head, body = gateway.call("POST", "/v1/query", {"question": "What is Jupiter?"})
    assert (status, body["error"]) == (503, "RetrieverUnavailable"), body
    assert head["Retry-After"] == "2"
    status, head, body = gateway.call(
        "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi?"}]}
    )
    assert status == 503 and body["error"]["type"] == "RetrieverUnavailable", body
    assert "Retry-After" in head
    # A stream fails the same way: retrieval runs before the event stream starts.
    status, head, body = gateway.call(
        "POST", "/v1/query", {"question": "What is Jupiter?", "stream": True}
    )
    assert (status, body["error"], head["Retry-After"]) == (503, "RetrieverUnavailable", "2")
    status, _, body = gateway.call(
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi?"}], "stream": True},
    )
    assert status == 503 and body["error"]["type"] == "RetrieverUnavailable", body


def test_readiness_names_what_is_missing(gateway: GatewayProcess) -> None:
    status, _, body = gateway.call("GET", "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["checks"]["store"] == "ok"
    assert "retriever unreachable" in body["checks"]["retriever"]
    assert "generator unreachable" in body["checks"]["generator"]


@pytest.mark.parametrize(
    "body",
    [
        {"question": ""},
        {"question": "   "},
        {"question": "x", "topK": 0},
        {"question": "x", "unknown": 1},
        {"question": "x", "filter": {"a": 1}},
    ],
)
def test_bad_queries_are_400(gateway: GatewayProcess, body: dict[str, object]) -> None:
    status, _, reply = gateway.call("POST", "/v1/query", body)
    assert status == 400 and reply["error"] == "BadRequest", reply


@pytest.mark.parametrize(
    "body",
    [
        {"messages": []},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}]},
        {"messages": [{"role": "user", "content": "q"}], "temperature": 3},
    ],
)
def test_bad_chat_requests_are_400_in_openai_shape(
    gateway: GatewayProcess, body: dict[str, object]
) -> None:
    status, _, reply = gateway.call("POST", "/v1/chat/completions", body)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error", reply


def test_feedback_status_codes(gateway: GatewayProcess, store: FeedbackStore) -> None:
    record = answer()
    store.record_answer(record)
    qid = str(record.query_id)
    post = lambda body, **kw: gateway.call("POST", "/v1/feedback", body, **kw)
    status, _, first = post({"query_id": qid, "rating": "up", "idempotency_key": "a"})
    assert status == 201 and first["replayed"] is False
    status, _, again = post({"query_id": qid, "rating": "up", "idempotency_key": "a"})
    assert status == 200 and again["feedback_id"] == first["feedback_id"] and again["replayed"]
    # The key from the header, as HTTP clients with retry middleware send it.
    status, _, header = post(
        {"query_id": qid, "rating": "down", "correction": "No."}, headers={"Idempotency-Key": "b"}
    )
    assert status == 201
    status, _, replay = post(
        {"query_id": qid, "rating": "down", "correction": "No."}, headers={"Idempotency-Key": "b"}
    )
    assert (status, replay["feedback_id"]) == (200, header["feedback_id"])
    assert post({"query_id": qid, "rating": "up", "idempotency_key": "b"})[0] == 409
    assert post({"query_id": str(uuid.uuid4()), "rating": "up", "idempotency_key": "c"})[0] == 404
    assert post({"query_id": qid, "rating": "meh", "idempotency_key": "d"})[0] == 400
    assert post({"query_id": "not-a-uuid", "rating": "up", "idempotency_key": "d"})[0] == 400
    assert post({"query_id": qid, "rating": "up"})[0] == 400  # no key at all
    assert (
        post(
            {"query_id": qid, "rating": "up", "idempotency_key": "x"},
            headers={"Idempotency-Key": "y"},
        )[0]
        == 400
    )
    assert store.counts().up == 1 and store.counts().down == 1 and store.counts().corrections == 1


def test_metrics_are_exported(gateway: GatewayProcess) -> None:
    gateway.call("POST", "/v1/query", {}, headers={"Authorization": ""})
    gateway.call("POST", "/v1/query", {"question": "q"})
    status, _, text = gateway.call("GET", "/metrics")
    assert status == 200
    for line in (
        'contextlm_gateway_requests_total{code="401",route="/v1/query"}',
        'contextlm_gateway_requests_total{code="503",route="/v1/query"}',
        'contextlm_gateway_stage_duration_seconds_count{stage="retrieve"}',
        'contextlm_gateway_stage_duration_seconds_count{stage="store"}',
        'contextlm_gateway_tokens_total{kind="prompt"}',
        'contextlm_gateway_feedback_total{rating="up"}',
        "contextlm_gateway_pending_answers 0.0",
    ):
        assert line in text, line
