"""`contextlm gateway`: one ContextualDeployment's endpoint.

    POST /v1/query             {question, topK?, filter?, stream?} -> answer + citations
    POST /v1/chat/completions  OpenAI-compatible, streaming or not; citations in `contextlm`
    POST /v1/feedback          {query_id, rating, correction?, comment?, idempotency_key}
    GET  /healthz /readyz /metrics

An answer is retrieve -> prompt (within the token budget) -> generate -> cite -> record.
Every answer has a query_id and is written to the feedback store before it is returned
(after the last chunk of a stream). A feedback is acknowledged (201, or 200 for a replay
of the same idempotency key) only after its commit; while the store is down the answer
is 503 with Retry-After, never 2xx.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import hmac
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .citations import Citations, map_citations
from .config import GatewayConfig, load_config
from .feedback.store import (
    AnswerRecord,
    FeedbackInput,
    IdempotencyConflict,
    StoreUnavailable,
    UnknownQuery,
)
from .gateway_api import (
    Answer,
    ChatRequest,
    FeedbackRequest,
    QueryRequest,
    chat_body,
    chat_chunk,
    contextlm_fields,
    query_body,
    reason,
    server_timing,
    usage,
)
from .gateway_metrics import GatewayMetrics
from .prompting import Prompt, Tokenizer, build_prompt
from .upstream import GeneratorClient, Retrieved, RetrieverClient, UpstreamError

if TYPE_CHECKING:
    from aiohttp import web

    from .feedback.recorder import Recorder

log = logging.getLogger("contextlm.gateway")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
RETRY_AFTER_S = "2"
READY_CACHE_S = 1.0
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]
Middleware = Callable[["web.Request", Handler], Awaitable["web.StreamResponse"]]


@dataclass
class Ask:
    """One question, whichever API it came through."""

    question: str
    top_k: int | None
    filter: dict[str, str]
    temperature: float
    max_tokens: int
    history: list[dict[str, str]]
    system: str = ""


@dataclass
class Prepared:
    """A question retrieved for and its prompt built: what is left is generation."""

    started: float
    timings: dict[str, float]
    retrieved: Retrieved
    prompt: Prompt


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        tokenizer: Tokenizer,
        recorder: Recorder,
        api_key: str | None = None,
        metrics: GatewayMetrics | None = None,
        schema_ok: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.prompt_spec = config.spec.prompt
        self.tokenizer = tokenizer
        self.recorder = recorder
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics or GatewayMetrics()
        self.schema_ok = schema_ok
        self.retriever = RetrieverClient(config.retriever_url, timeout=config.request_timeout_s)
        self.generator = GeneratorClient(
            config.generator_url,
            config.generator_grpc,
            model=config.model_name,
            timeout=config.request_timeout_s,
        )
        self._ready: tuple[float, dict[str, str]] | None = None
        recorder.on_pending = self.metrics.pending.set

    def app(self) -> web.Application:
        from aiohttp import web

        middlewares: list[Any] = [
            web.middleware(_plain(self._count)),
            web.middleware(_plain(self._authenticate)),
        ]
        app = web.Application(client_max_size=1 << 20, middlewares=middlewares)
        app.router.add_post("/v1/query", self.query)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/feedback", self.feedback)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        app.on_cleanup.append(self._close_clients)
        return app

    async def _close_clients(self, _app: web.Application) -> None:
        await self.retriever.close()
        await self.generator.close()

    # Middleware ----------------------------------------------------------------------

    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        from aiohttp import web

        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.metrics.requests.labels(route=route, code=str(exc.status)).inc()
            raise
        self.metrics.requests.labels(route=route, code=str(response.status)).inc()
        return response

    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.api_key is not None and request.path.startswith("/v1/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken does not tell how much of the key matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_key
            ):
                return error(
                    request,
                    401,
                    "Unauthorized",
                    "a valid API key is required",
                    headers={"WWW-Authenticate": 'Bearer realm="contextlm"'},
                )
        return await handler(request)

    # Answering ---------------------------------------------------------------------

    async def prepare(self, ask: Ask) -> Prepared:
        """Retrieve and build the prompt; raises UpstreamError before anything is sent."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        with self.metrics.timed("retrieve", timings):
            retrieved = await self.retriever.retrieve(
                ask.question, top_k=ask.top_k, filter=ask.filter
            )
        if "rerank" in retrieved.timings:
            self.metrics.stage.labels(stage="rerank").observe(retrieved.timings["rerank"])
        with self.metrics.timed("prompt", timings):
            prompt = build_prompt(
                self.prompt_spec,
                question=ask.question,
                chunks=retrieved.chunks,
                tokenizer=self.tokenizer,
                history=ask.history,
                system_extra=ask.system,
            )
        return Prepared(started, timings, retrieved, prompt)

    async def _finish(
        self,
        ask: Ask,
        prepared: Prepared,
        *,
        query_id: uuid.UUID,
        text: str,
        closed: bool = False,
    ) -> Answer:
        completion_tokens = self.tokenizer.count([text])[0] if text else 0
        finish = "length" if completion_tokens >= ask.max_tokens else "stop"
        prompt, timings = prepared.prompt, prepared.timings
        answer = Answer(
            query_id=query_id,
            text=text,
            prompt=prompt,
            retrieved=prepared.retrieved,
            citations=(
                map_citations(text, prompt.chunks)
                if self.prompt_spec.citations
                else Citations(cited=[], invalid=[])
            ),
            model_revision=self.config.model_revision,
            completion_tokens=completion_tokens,
            finish_reason="client_closed" if closed else finish,
            latency_ms=(time.perf_counter() - prepared.started) * 1000,
            timings=timings,
        )
        self.metrics.tokens.labels(kind="prompt").inc(prompt.prompt_tokens)
        self.metrics.tokens.labels(kind="completion").inc(completion_tokens)
        with self.metrics.timed("store", timings):
            answer.recorded = await self.recorder.record(self._record(ask, answer))
        return answer

    def _record(self, ask: Ask, answer: Answer) -> AnswerRecord:
        numbered = {c.chunk_id: n for n, c in enumerate(answer.prompt.chunks, start=1)}
        return AnswerRecord(
            query_id=answer.query_id,
            question=ask.question,
            prompt=answer.prompt.text,
            answer=answer.text,
            retrieved=[
                {
                    "chunk_id": c.chunk_id,
                    "doc_id": c.doc_id,
                    "uri": c.uri,
                    "rank": c.rank,
                    "score": c.score,
                    "n": numbered.get(c.chunk_id),
                }
                for c in answer.retrieved.chunks
            ],
            cited=answer.citations.chunk_ids,
            model_revision=answer.model_revision,
            index_version=answer.retrieved.index_version,
            finish_reason=answer.finish_reason,
            latency_ms=answer.latency_ms,
            prompt_tokens=answer.prompt.prompt_tokens,
            completion_tokens=answer.completion_tokens,
        )

    async def answer(self, ask: Ask) -> Answer:
        prepared = await self.prepare(ask)
        with self.metrics.timed("generate", prepared.timings):
            text = await self.generator.generate(
                prepared.prompt.text, max_tokens=ask.max_tokens, temperature=ask.temperature
            )
        return await self._finish(ask, prepared, query_id=uuid.uuid4(), text=text)

    async def stream_answer(
        self,
        ask: Ask,
        prepared: Prepared,
        *,
        query_id: uuid.UUID,
        send: Callable[[str], Awaitable[None]],
    ) -> Answer:
        """Generate with `send(piece)` for each piece; the answer is recorded at the end,
        also when the client went away mid-stream (with finish_reason client_closed)."""
        pieces: list[str] = []
        closed = False
        generated = time.perf_counter()
        stream = self.generator.stream(
            prepared.prompt.text, max_tokens=ask.max_tokens, temperature=ask.temperature
        )
        try:
            async for piece in stream:
                pieces.append(piece)
                try:
                    await send(piece)
                except ConnectionError:
                    closed = True
                    break
        finally:
            await stream.aclose()
            prepared.timings["generate"] = time.perf_counter() - generated
            self.metrics.stage.labels(stage="generate").observe(prepared.timings["generate"])
        return await self._finish(
            ask, prepared, query_id=query_id, text="".join(pieces), closed=closed
        )

    # Routes --------------------------------------------------------------------------

    async def query(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        started = time.perf_counter()
        try:
            body = QueryRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return error(request, 400, "BadRequest", reason(exc))
        ask = Ask(
            question=body.question,
            top_k=body.top_k,
            filter=body.filter,
            temperature=self._temperature(body.temperature),
            max_tokens=body.max_tokens or self.prompt_spec.max_tokens,
            history=[],
        )
        if not body.stream:
            try:
                answer = await self.answer(ask)
            except UpstreamError as exc:
                return upstream_error(request, exc)
            return web.json_response(query_body(answer), headers=timing_header(answer, started))
        query_id = uuid.uuid4()
        try:
            prepared = await self.prepare(ask)
        except UpstreamError as exc:
            return upstream_error(request, exc)
        response = await self._start_sse(request)

        async def send(piece: str) -> None:
            await sse(response, {"query_id": str(query_id), "delta": piece})

        try:
            answer = await self.stream_answer(ask, prepared, query_id=query_id, send=send)
        except UpstreamError as exc:
            await _send_quietly(response, {"error": exc.error, "reason": str(exc)})
            return response
        if answer.finish_reason != "client_closed":
            await _send_quietly(response, {**query_body(answer), "done": True}, done=True)
        return response

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        started = time.perf_counter()
        try:
            body = ChatRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return error(request, 400, "invalid_request_error", reason(exc))
        ask = Ask(
            question=body.question(),
            top_k=body.contextlm.top_k,
            filter=body.contextlm.filter,
            temperature=self._temperature(body.temperature),
            max_tokens=body.max_completion_tokens or body.max_tokens or self.prompt_spec.max_tokens,
            history=body.history(),
            system=body.system(),
        )
        model = body.model or self.config.deployment
        if not body.stream:
            try:
                answer = await self.answer(ask)
            except UpstreamError as exc:
                return upstream_error(request, exc)
            headers = timing_header(answer, started)
            return web.json_response(chat_body(answer, model=model), headers=headers)
        return await self._chat_stream(request, ask, model=model, usage_chunk=body.include_usage())

    async def _chat_stream(
        self, request: web.Request, ask: Ask, *, model: str, usage_chunk: bool
    ) -> web.StreamResponse:
        query_id = uuid.uuid4()
        created = int(time.time())
        try:
            prepared = await self.prepare(ask)
        except UpstreamError as exc:
            return upstream_error(request, exc)
        response = await self._start_sse(request)
        first = {"role": "assistant", "content": ""}
        await sse(response, chat_chunk(query_id, model=model, created=created, delta=first))

        async def send(piece: str) -> None:
            chunk = chat_chunk(query_id, model=model, created=created, delta={"content": piece})
            await sse(response, chunk)

        try:
            answer = await self.stream_answer(ask, prepared, query_id=query_id, send=send)
        except UpstreamError as exc:
            await _send_quietly(response, {"error": {"message": str(exc), "type": exc.error}})
            return response
        if answer.finish_reason == "client_closed":
            return response
        last = chat_chunk(
            query_id, model=model, created=created, delta={}, finish_reason=answer.finish_reason
        )
        last["contextlm"] = contextlm_fields(answer)
        if usage_chunk:
            last["usage"] = usage(answer)
        await _send_quietly(response, last, done=True)
        return response

    async def feedback(self, request: web.Request) -> web.Response:
        from aiohttp import web

        try:
            body = FeedbackRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return error(request, 400, "BadRequest", reason(exc))
        header = request.headers.get("Idempotency-Key")
        if header is not None and body.idempotency_key not in (None, header):
            return error(request, 400, "BadRequest", "Idempotency-Key header and body differ")
        key = body.idempotency_key or header
        if not key or len(key) > 255:
            return error(
                request,
                400,
                "BadRequest",
                "idempotency_key (or an Idempotency-Key header) of 1 to 255 characters is required",
            )
        item = FeedbackInput(
            query_id=body.query_id,
            rating=body.rating,
            idempotency_key=key,
            correction=body.correction,
            comment=body.comment,
        )
        try:
            with self.metrics.timed("store"):
                stored = await self.recorder.add_feedback(item)
        except StoreUnavailable as exc:
            return error(
                request, 503, "StoreUnavailable", str(exc), headers={"Retry-After": RETRY_AFTER_S}
            )
        except UnknownQuery as exc:
            return error(request, 404, "UnknownQuery", str(exc))
        except IdempotencyConflict as exc:
            return error(request, 409, "IdempotencyConflict", str(exc))
        if stored.created:
            self.metrics.feedback.labels(rating=stored.rating).inc()
        return web.json_response(
            {
                "feedback_id": str(stored.feedback_id),
                "query_id": str(stored.query_id),
                "rating": stored.rating,
                "created_at": stored.created_at.isoformat(),
                "replayed": not stored.created,
            },
            status=201 if stored.created else 200,
        )

    async def healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        checks = await self.checks()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def checks(self) -> dict[str, str]:
        """Store, retriever and generator, checked at once and cached for a second so a
        burst of probes does not become a burst of upstream calls."""
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return self._ready[1]
        store, retriever, generator = await asyncio.gather(
            self._store_check(), self.retriever.ready(), self.generator.ready()
        )
        checks = {
            "store": store or "ok",
            "retriever": retriever or "ok",
            "generator": generator or "ok",
        }
        self._ready = (now, checks)
        return checks

    async def _store_check(self) -> str | None:
        try:
            await asyncio.wait_for(self.recorder.call(self.recorder.store.ping), 3)
            ok = await asyncio.wait_for(self.recorder.call(self.schema_ok), 3)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not ready"
            return f"feedback store unreachable: {type(exc).__name__}: {exc}"
        return None if ok else "feedback store schema is not at head: run `contextlm migrate`"

    async def metrics_text(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    # Helpers -----------------------------------------------------------------------

    def _temperature(self, requested: float | None) -> float:
        return self.prompt_spec.temperature if requested is None else requested

    async def _start_sse(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        return response

    async def purge_forever(self) -> None:
        """Delete feedback past the spec's retention, now and then; failures wait for the
        next round (retention is not urgent, and every replica runs this)."""
        days = self.config.spec.feedback.retention_days
        await asyncio.sleep(min(60.0, self.config.retention_interval_s))
        while True:
            cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
            purge = functools.partial(self.recorder.store.purge, older_than=cutoff)
            try:
                purged = await self.recorder.call(purge)
                if purged.feedback or purged.queries:
                    log.info(
                        "retention: deleted %d feedback and %d answers older than %s",
                        purged.feedback,
                        purged.queries,
                        cutoff.isoformat(),
                    )
            except StoreUnavailable as exc:
                log.warning("retention purge skipped: %s", exc)
            await asyncio.sleep(self.config.retention_interval_s)


def timing_header(answer: Answer, started: float) -> dict[str, str]:
    return {"Server-Timing": server_timing(answer.timings, time.perf_counter() - started)}


def _plain(method: Middleware) -> Middleware:
    """A function around a bound method: aiohttp marks middlewares with an attribute,
    which a bound method cannot carry."""

    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await method(request, handler)

    return middleware


async def sse(response: web.StreamResponse, payload: Any) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    await response.write(f"data: {data}\n\n".encode())


async def _send_quietly(response: web.StreamResponse, payload: Any, *, done: bool = False) -> None:
    """The last events of a stream; a client that left already is no error."""
    try:
        await sse(response, payload)
        if done:
            await sse(response, "[DONE]")
        await response.write_eof()
    except ConnectionError:
        pass


def error(
    request: web.Request,
    status: int,
    kind: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Errors in OpenAI's shape on the OpenAI route, in the house shape elsewhere."""
    from aiohttp import web

    if request.path == "/v1/chat/completions":
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"error": kind, "reason": message}
    return web.json_response(body, status=status, headers=headers)


def upstream_error(request: web.Request, exc: UpstreamError) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
    return error(request, exc.status, exc.error, str(exc), headers=headers)


# Process -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = load_config(GatewayConfig, args.config)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = config.model_copy(update=updates)
    termination_log = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    try:
        gateway = build(config)
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - reported, then exit 1
        log.error("cannot start: %s", exc)
        line = json.dumps({"error": type(exc).__name__, "reason": str(exc)})
        print(line, file=sys.stderr)
        with_log(termination_log, line)
        return 1
    return asyncio.run(serve(gateway))


def with_log(path: str, line: str) -> None:
    try:
        Path(path).write_text(line + "\n")
    except OSError:
        pass


def build(config: GatewayConfig) -> Gateway:
    """Load the tokenizer and open (for SQLite: create or upgrade) the feedback store."""
    from .feedback.migrate import current_revision, head_revision, upgrade
    from .feedback.recorder import Recorder
    from .feedback.store import FeedbackStore, sqlite_dsn
    from .prompting import load_tokenizer
    from .store import open_store

    # The gateway tokenizes a handful of short texts per request; the tokenizers crate's
    # thread pool would spin worker threads for each batch, taking CPU from the event
    # loop and the store threads for no gain at that size.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    backend = config.spec.feedback.store.backend
    if backend == "sqlite":
        Path(config.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        dsn = sqlite_dsn(config.sqlite_path)
    else:
        dsn = os.environ.get(config.feedback_dsn_env, "")
        if not dsn:
            raise SystemExit(f"${config.feedback_dsn_env} is not set (the feedback store DSN)")
    store = FeedbackStore.open(
        dsn, deployment=config.deployment_key, pool_size=config.store_pool_size
    )
    head = head_revision()
    if backend == "sqlite":
        upgrade(store.engine)  # embedded: no migrate Job runs before us
    at_head = False

    def schema_ok() -> bool:
        # PostgreSQL is migrated by the Job; until it has run, the gateway is not ready.
        nonlocal at_head
        if not at_head:
            at_head = current_revision(store.engine) == head
        return at_head

    artifacts = open_store(config.store) if config.tokenizer.startswith("models/") else None
    tokenizer = load_tokenizer(
        config.tokenizer,
        store=artifacts,
        cache_dir=config.cache_dir,
        chat_template=config.chat_template,
    )
    api_key = os.environ.get(config.api_key_env) or None
    recorder = Recorder(store, threads=config.store_pool_size)
    return Gateway(
        config, tokenizer=tokenizer, recorder=recorder, api_key=api_key, schema_ok=schema_ok
    )


async def serve(gateway: Gateway) -> int:
    from aiohttp import web

    config = gateway.config
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    log.info(
        "listening on %s:%d for %s (auth %s)",
        config.host,
        config.port,
        config.deployment_key,
        "on" if gateway.api_key else "off",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.ensure_future(gateway.recorder.flush_forever()),
        asyncio.ensure_future(gateway.purge_forever()),
    ]
    try:
        await stop.wait()
        return 0
    finally:
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        await gateway.recorder.flush()
        gateway.recorder.close()
