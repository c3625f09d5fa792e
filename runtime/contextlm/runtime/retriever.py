"""`contextlm retriever`: hybrid retrieval over one index version, served over HTTP.

    POST /v1/retrieve  {"query": str, "topK"?: int, "filter"?: {key: value}}
    GET  /readyz       200 once the index is loaded, 503 before
    GET  /healthz      200 while the process serves
    GET  /metrics      Prometheus text

The server listens at once and loads the index in the background, so the kubelet can
tell "starting" (503 on /readyz) from "dead". Requests are answered in batches: one
worker thread runs the engine over every request that queued while the previous batch
ran, which keeps one request's latency low when idle and turns a burst into one
embedding forward pass and one FAISS call instead of many.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .artifacts import IndexManifest, index_prefix
from .config import RetrieverConfig, load_config
from .index import DEFAULT_TERMINATION_LOG, report
from .metrics import RetrieverMetrics
from .store import ArtifactStore, open_store

if TYPE_CHECKING:
    from aiohttp import web

    from .search import Engine, Query

log = logging.getLogger("contextlm.retriever")

MAX_BATCH = 32
MAX_TOP_K = 1000


class RetrieveRequest(BaseModel):
    """The body of POST /v1/retrieve."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    query: str = Field(min_length=1, max_length=10_000)
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K, alias="topK")
    filter: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank")
        return value


def bad_request_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# Loading ---------------------------------------------------------------------------


def load_engine(config: RetrieverConfig, store: ArtifactStore) -> Engine:
    """Download the index version once into the cache, then load models and indexes."""
    from .embedding import Embedder, model_fingerprint
    from .models import resolve_model
    from .search import Engine, LoadedIndex

    prefix = index_prefix(config.namespace, config.stack, config.index_version)
    raw = store.manifest(prefix)
    if raw is None:
        raise LookupError(f"index version {config.index_version} is missing or unpublished")
    manifest = IndexManifest.model_validate(raw)
    cache = Path(config.cache_dir).expanduser()
    directory = cache / "indexes" / config.index_version
    if not (directory / ".complete").exists():
        shutil.rmtree(directory, ignore_errors=True)
        store.download_dir(prefix, directory)
        (directory / ".complete").touch()
    embedders: dict[Path, Embedder] = {}

    def embedder_for(name: str, fingerprint: str) -> Embedder:
        path = resolve_model(name, store=store, cache_dir=cache / "models")
        if model_fingerprint(path) != fingerprint:
            raise ValueError(
                f"embedding model {name} differs from the one index {manifest.index_version} "
                "was built with: rebuild the index or restore the model"
            )
        if path not in embedders:
            embedders[path] = Embedder(path, device=config.device)
        return embedders[path]

    index = LoadedIndex(directory, manifest=manifest, spec=config.spec, embedder_for=embedder_for)
    reranker = None
    if config.spec.reranker is not None:
        from .rerank import CrossEncoder

        path = resolve_model(config.spec.reranker.model, store=store, cache_dir=cache / "models")
        reranker = CrossEncoder(path, device=config.device)
    return Engine(index, reranker=reranker)


# Batching --------------------------------------------------------------------------


@dataclass
class _Pending:
    query: Query
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Feeds queued requests to the engine, as many at a time as have arrived."""

    def __init__(self, engine: Engine, metrics: RetrieverMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, query: Query) -> dict[str, Any]:
        pending = _Pending(query, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            now = time.perf_counter()
            for item in batch:
                self.metrics.observe("queue", now - item.enqueued)
            self.metrics.batch_size.observe(len(batch))
            queries = [p.query for p in batch]
            try:
                answers = await loop.run_in_executor(
                    self.executor, self.engine.retrieve, queries, self.metrics.observe
                )
            except Exception as exc:  # answered as 500s; the loop must survive
                log.exception("batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, answer in zip(batch, answers, strict=True):
                if not item.future.done():
                    item.future.set_result(answer)


# HTTP --------------------------------------------------------------------------------


class Service:
    def __init__(self, config: RetrieverConfig, metrics: RetrieverMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RetrieverMetrics()
        self.batcher: Batcher | None = None
        self.state = "loading"
        self.reason = f"loading index {config.index_version}"

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/v1/retrieve", self.retrieve)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_text)
        return app

    async def load(self, store: ArtifactStore) -> None:
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(None, load_engine, self.config, store)
        manifest = engine.index.manifest
        self.metrics.index_info.labels(
            namespace=self.config.namespace,
            stack=self.config.stack,
            index_version=manifest.index_version,
            snapshot_id=manifest.snapshot_id,
        ).set(1)
        self.metrics.index_chunks.set(len(engine.index.chunks))
        self.batcher = Batcher(engine, self.metrics)
        self.batcher.start()
        self.state, self.reason = "ready", f"serving index {manifest.index_version}"
        log.info("ready: index %s, %d chunks", manifest.index_version, len(engine.index.chunks))

    async def retrieve(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        response = await self._retrieve(request)
        self.metrics.requests.labels(code=str(response.status)).inc()
        if response.status == 200:
            self.metrics.observe("total", time.perf_counter() - start)
        return response

    async def _retrieve(self, request: web.Request) -> web.Response:
        from aiohttp import web

        from .search import Query

        if self.batcher is None:
            return _error(503, "NotReady", self.reason)
        try:
            body = RetrieveRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return _error(400, "BadRequest", bad_request_reason(exc))
        query = Query(
            text=body.query, top_k=body.top_k or self.config.spec.top_k, filter=body.filter
        )
        try:
            answer = await self.batcher.submit(query)
        except Exception as exc:  # noqa: BLE001 - any engine failure is this request's 500
            return _error(500, "InternalError", f"{type(exc).__name__}: {exc}")
        return web.json_response(answer)

    async def readyz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        status = 200 if self.state == "ready" else 503
        return web.json_response({"ready": status == 200, "reason": self.reason}, status=status)

    async def healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


def _error(status: int, error: str, reason: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": error, "reason": reason}, status=status)


# Process ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config)")
    parser.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help="where to write the reason when the index cannot be loaded",
    )


def run(args: argparse.Namespace) -> int:
    from .embedding import passive_openmp

    passive_openmp()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = load_config(RetrieverConfig, args.config)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = config.model_copy(update=updates)
    return asyncio.run(serve(config, getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)))


async def serve(config: RetrieverConfig, termination_log: str) -> int:
    from aiohttp import web

    service = Service(config)
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    log.info("listening on %s:%d", config.host, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        load = asyncio.ensure_future(service.load(open_store(config.store)))
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if load.done() and load.exception() is not None:
            exc = load.exception()
            log.error("cannot load index %s: %s", config.index_version, exc)
            return report(
                {"error": type(exc).__name__, "reason": str(exc)}, termination_log, code=1
            )
        await waiter
        return 0
    finally:
        if service.batcher is not None:
            await service.batcher.stop()
        await runner.cleanup()
