"""`contextlm generator`: a causal LM served over the KServe v2 / Triton protocol on CPU.

    HTTP (aiohttp, `http_port`):  /v2, /v2/health/{live,ready}, /v2/models/<m>[/ready,
        /config, /infer, /generate, /generate_stream], /metrics
    gRPC (`grpc_port`):           Triton's GRPCInferenceService, ModelStreamInfer included

It is the development and CI stand-in for Triton with the TensorRT-LLM backend: the
model is served as `ensemble` with the ensemble's tensors, so the gateway's
`tritonclient` code runs unchanged against either. The servers listen at once and load
the model in the background, so the kubelet can tell "starting" (ready answers 503)
from "dead". One worker thread runs the model: requests queue for it (up to
`max_queue_size`, then 503), which is the right shape for a CPU and keeps memory flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from .config import GeneratorConfig, load_config
from .generator_engine import Completion, Engine, PromptError, Sampling
from .generator_protocol import InferError

log = logging.getLogger("contextlm.generator")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# CPU generation takes from tens of milliseconds (a token) to minutes (a long answer).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GeneratorMetrics:
    """Requests by protocol and outcome, their duration, tokens in and out."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "contextlm_generator_requests_total",
            "Inference requests by protocol (http, grpc), kind (infer, generate, stream) and"
            " outcome (ok, invalid, unavailable, cancelled, error).",
            ["protocol", "kind", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "contextlm_generator_request_duration_seconds",
            "Time from receiving an inference request to its last response.",
            ["protocol", "kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "contextlm_generator_time_to_first_token_seconds",
            "Time from accepting a streamed request to its first text (queueing included).",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "contextlm_generator_tokens_total",
            "Tokens processed: prompt (read) and completion (generated).",
            ["kind"],
            registry=self.registry,
        )
        self.queued = Gauge(
            "contextlm_generator_queued_requests",
            "Requests waiting for the model.",
            registry=self.registry,
        )
        self.model_info = Gauge(
            "contextlm_generator_model_info",
            "The model served (value 1).",
            ["model_name", "model", "revision"],
            registry=self.registry,
        )
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind=kind)


@dataclass(frozen=True)
class Admitted:
    """A prompt the generator accepted, tokenized."""

    engine: Engine
    prompt_ids: list[int]


class Generator:
    """The model and the queue in front of it, shared by the HTTP and gRPC servers."""

    def __init__(self, config: GeneratorConfig, metrics: GeneratorMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or GeneratorMetrics()
        self.engine: Engine | None = None
        self.reason = f"loading model {config.model}"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.waiting = 0
        self._lock = threading.Lock()
        self._running: set[threading.Event] = set()

    @property
    def ready(self) -> bool:
        return self.engine is not None

    async def load(self) -> None:
        from .generator_engine import load_engine

        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self.executor, load_engine, self.config)
        self.reason = f"serving {self.config.model} ({self.config.revision})"
        self.metrics.model_info.labels(
            model_name=self.config.model_name,
            model=self.config.model,
            revision=self.config.revision,
        ).set(1)
        log.info("ready: %s", self.reason)

    def close(self) -> None:
        """Stop: queued requests are dropped and a running generation ends at its next
        token, so the process exits within its termination grace period."""
        for cancelled in list(self._running):
            cancelled.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def track(self, protocol: str, kind: str) -> Iterator[None]:
        """Count one request and time it, by how it ended."""
        start = time.perf_counter()
        outcome = "ok"
        try:
            yield
        except InferError as exc:
            outcome = "unavailable" if exc.status == 503 else "invalid"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self.metrics.requests.labels(protocol=protocol, kind=kind, outcome=outcome).inc()
            if outcome == "ok":
                self.metrics.duration.labels(protocol=protocol, kind=kind).observe(
                    time.perf_counter() - start
                )

    def admit(self, prompt: str) -> Admitted:
        """Check that a prompt can be generated from now: the model is loaded, the queue
        has room, the prompt fits. Called before any response is started."""
        if self.engine is None:
            raise InferError(503, f"model '{self.config.model_name}' is not ready: {self.reason}")
        if self.waiting >= self.config.max_queue_size:
            raise InferError(
                503, f"the generator's queue is full ({self.config.max_queue_size} waiting)"
            )
        try:
            return Admitted(self.engine, self.engine.encode(prompt))
        except PromptError as exc:
            raise InferError(400, str(exc)) from exc

    async def complete(self, prompt: str, sampling: Sampling) -> Completion:
        async for item in self.run(self.admit(prompt), sampling, stream=False):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("generation ended without a result")

    async def complete_all(self, prompts: list[str], sampling: list[Sampling]) -> list[str]:
        """A batch, one row after the other: identical to each row sent alone."""
        admitted = [self.admit(p) for p in prompts]  # refuse the whole batch up front
        texts = []
        for request, params in zip(admitted, sampling, strict=True):
            async for item in self.run(request, params, stream=False):
                if isinstance(item, Completion):
                    texts.append(item.text)
        return texts

    async def run(
        self, request: Admitted, sampling: Sampling, *, stream: bool
    ) -> AsyncGenerator[str | Completion, None]:
        """Yield text deltas (when `stream`) as the worker thread generates them, then the
        Completion. Leaving the iteration early stops the generation."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def send(item: str | Completion | BaseException) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed on shutdown
                loop.call_soon_threadsafe(items.put_nowait, item)

        def work() -> None:
            self._queue(-1)
            if cancelled.is_set():
                return
            try:
                send(
                    request.engine.generate(
                        request.prompt_ids,
                        sampling,
                        on_text=send if stream else None,
                        cancelled=cancelled,
                    )
                )
            except Exception as exc:
                log.exception("generation failed")
                send(exc)

        self._queue(+1)
        self._running.add(cancelled)
        loop.run_in_executor(self.executor, work)
        start, first = time.perf_counter(), True
        try:
            while True:
                item = await items.get()
                if first and isinstance(item, str):
                    self.metrics.first_token.observe(time.perf_counter() - start)
                    first = False
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Completion):
                    self.metrics.tokens.labels(kind="prompt").inc(item.prompt_tokens)
                    self.metrics.tokens.labels(kind="completion").inc(item.completion_tokens)
                    yield item
                    return
                yield item
        finally:
            cancelled.set()
            self._running.discard(cancelled)

    def _queue(self, change: int) -> None:
        with self._lock:
            self.waiting += change
            self.metrics.queued.set(self.waiting)


# Process ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to serve (overrides the config)")
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--http-port", type=int, help="HTTP port (overrides the config)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port, 0 for none (overrides)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.config is None and args.model and not _has_env_config():
        config = GeneratorConfig(model=args.model)
    else:
        config = load_config(GeneratorConfig, args.config)
    overrides = {
        "model": args.model,
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
    }
    config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return asyncio.run(serve(config, getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)))


def _has_env_config() -> bool:
    import os

    from .config import CONFIG_ENV

    return bool(os.environ.get(CONFIG_ENV))


def _report(reason: dict[str, Any], path: str) -> None:
    import json

    line = json.dumps(reason)
    print(line, file=sys.stderr)
    with contextlib.suppress(OSError), open(path, "w") as handle:
        handle.write(line + "\n")


async def serve(config: GeneratorConfig, termination_log: str = DEFAULT_TERMINATION_LOG) -> int:
    from aiohttp import web

    from .generator_http import build_app

    generator = Generator(config)
    runner = web.AppRunner(build_app(generator), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.http_port).start()
    grpc_server = None
    if config.grpc_port:
        from .generator_grpc import start_grpc

        grpc_server = await start_grpc(generator, f"{config.host}:{config.grpc_port}")
    log.info("listening on %s: http %d, grpc %d", config.host, config.http_port, config.grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        load = asyncio.ensure_future(generator.load())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({load, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if load.done() and load.exception() is not None:
            exc = load.exception()
            log.error("cannot load model %s: %s", config.model, exc)
            _report({"error": type(exc).__name__, "reason": str(exc)}, termination_log)
            return 1
        await waiter
        return 0
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        await runner.cleanup()
        generator.close()
