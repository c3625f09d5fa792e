"""Gateway overhead: the latency `/v1/query` adds over calling the retriever and the
generator directly, at 1 and 32 concurrent clients, in one run on the same processes.

Both paths do the same work for each question: the direct path POSTs to `contextlm
retriever`, then sends the prompt the gateway would build (built outside the timed part)
to `contextlm generator` with `tritonclient`'s HTTP client; the gateway path POSTs the
question to `contextlm gateway`, which retrieves, builds the prompt with the model's
tokenizer, generates through the same client, maps citations and commits the answer to a
real PostgreSQL. Each client alternates the two paths so both see the same load.

The generator serves a tiny random Llama built here (2 layers, a few hundred KB) so that
generation takes milliseconds and the difference is not buried in model time; `--model`
serves another (SmolLM2-135M-Instruct, say) when the model's own time is wanted too.

    python bench/gateway_overhead.py [--requests 200] [--max-tokens 16] [--model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "runtime"), str(ROOT / "bench")]

from common import percentile
from feedback_helpers import fresh_postgres, open_migrated
from gateway_helpers import GatewayProcess, GeneratorProcess, deployment_spec
from generator_helpers import build_tiny_llama
from retrieval_helpers import (
    NAMESPACE,
    STACK,
    RetrieverProcess,
    corpus_chunks,
    index_config,
    publish_snapshot,
    stack_spec,
)
from servers import CACHE, run_postgres

from contextlm.runtime.config import GatewayConfig, RetrieverConfig
from contextlm.runtime.index import build
from contextlm.runtime.prompting import ContextChunk, build_prompt, load_tokenizer
from contextlm.runtime.store import LocalStore, StoreConfig
from contextlm.runtime.upstream import GeneratorClient

QUESTIONS = [
    "How does a Deployment keep pods running?",
    "What restarts a failing container?",
    "What gives pods a stable address?",
    "How does sourdough rise?",
    "How hot should the oven be for bread?",
    "How is croissant dough made?",
    "Which planet is the largest?",
    "What is a supernova?",
    "What does the Hubble telescope do?",
    "What does insulin do?",
    "What was the first antibiotic?",
    "How do vaccines work?",
]


class Direct:
    """The retriever and the generator called by the client itself."""

    def __init__(self, retriever: str, generator: GeneratorClient, gateway: GatewayConfig) -> None:
        self.retriever = retriever
        self.generator = generator
        self.spec = gateway.spec.prompt
        self.tokenizer = load_tokenizer(gateway.tokenizer, store=None, cache_dir=gateway.cache_dir)

    async def ask(self, session: Any, question: str) -> float:
        start = time.perf_counter()
        async with session.post(f"{self.retriever}/v1/retrieve", json={"query": question}) as r:
            body = await r.json()
        retrieved = time.perf_counter() - start
        chunks = [ContextChunk.from_retriever(c) for c in body["results"]]
        prompt = build_prompt(self.spec, question=question, chunks=chunks, tokenizer=self.tokenizer)
        start = time.perf_counter()
        await self.generator.generate(
            prompt.text, max_tokens=self.spec.max_tokens, temperature=self.spec.temperature
        )
        return retrieved + time.perf_counter() - start


async def gateway_ask(
    session: Any, url: str, question: str
) -> tuple[float, float, dict[str, float]]:
    """Latency seen by the client, and the part of it the gateway spent waiting on the
    retriever and the generator (from its Server-Timing header)."""
    start = time.perf_counter()
    async with session.post(f"{url}/v1/query", json={"question": question}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {body}")
        timing = {
            name: float(dur)
            for name, dur in re.findall(r"(\w+);dur=([\d.]+)", response.headers["Server-Timing"])
        }
    total = time.perf_counter() - start
    return total, (timing["retrieve"] + timing["generate"]) / 1000, timing


async def measure(
    direct: Direct, gateway_url: str, clients: int, requests: int
) -> dict[str, list[float]]:
    import aiohttp

    times: dict[str, list[float]] = {"direct": [], "gateway": [], "paired": []}
    work = iter(range(requests))

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        for i in work:
            question = QUESTIONS[i % len(QUESTIONS)]
            # Alternate which path goes first, so neither always meets a warmer cache.
            order = ("direct", "gateway") if (i + offset) % 2 else ("gateway", "direct")
            for path in order:
                if path == "direct":
                    times[path].append(await direct.ask(session, question))
                else:
                    total, upstream, timing = await gateway_ask(session, gateway_url, question)
                    times[path].append(total)
                    times["paired"].append(total - upstream)
                    for stage, ms in timing.items():
                        times.setdefault(f"stage {stage}", []).append(ms / 1000)

    connector = aiohttp.TCPConnector(limit=2 * clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, k) for k in range(clients)))
    return times


def stage_means(metrics: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        found = re.match(
            r'contextlm_gateway_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line
        )
        if found:
            kind, stage, value = found.groups()
            (sums if kind == "sum" else counts)[stage] = float(value)
    return {s: 1000 * sums[s] / counts[s] for s in sums if counts.get(s)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per path and concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default="tiny", help="tiny, or a model the generator loads")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--generator-threads", type=int, default=1)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="contextlm-bench-gateway-"))
    model = str(build_tiny_llama(work / "tiny")) if args.model == "tiny" else args.model

    store = StoreConfig(kind="local", path=str(work / "store"))
    snapshot = publish_snapshot(LocalStore(store.path), corpus_chunks())
    stack = stack_spec(topK=3)
    version = build(index_config(store, work / "index", snapshot, stack))["indexVersion"]
    (work / "retriever").mkdir()
    retriever = RetrieverProcess(
        RetrieverConfig(
            namespace=NAMESPACE, stack=STACK, index_version=version, spec=stack, store=store,
            cache_dir=str(work / "retriever-cache"), device="cpu",
        ),
        work / "retriever",
    )  # fmt: skip
    # One torch thread: OpenMP workers spin for a while after each generation, and on a
    # small machine that time would be taken from whatever the gateway does next.
    generator = GeneratorProcess(
        model, work / "generator", cache_dir=CACHE / "models", threads=args.generator_threads
    )
    processes: list[Any] = [retriever, generator]
    try:
        with run_postgres() as server:
            dsn = fresh_postgres(server)
            open_migrated(dsn, "bench/docs").close()
            retriever.wait_ready()
            generator.wait_ready()
            config = GatewayConfig(
                namespace="bench",
                deployment="docs",
                spec=deployment_spec(
                    maxTokens=args.max_tokens, temperature=0.0, maxContextTokens=128
                ),
                retriever_url=retriever.url,
                generator_url=generator.http,
                generator_grpc=generator.grpc,
                tokenizer=model,
                cache_dir=str(CACHE / "models"),
            )
            gateway = GatewayProcess(config, work / "gateway", dsn=dsn)
            processes.append(gateway)
            gateway.wait("/readyz", timeout=600)
            rows = asyncio.run(run_all(args, config, retriever.url, generator, gateway.url))
            metrics = gateway.call("GET", "/metrics")[2]
    finally:
        for process in reversed(processes):
            process.stop()

    print(
        f"gateway overhead: /v1/query vs retriever + generator called directly; model {args.model},"
        f" max_tokens {args.max_tokens}, {args.requests} requests per path and concurrency"
    )
    print(f"{'clients':>7} {'':<34} {'p50 ms':>8} {'p99 ms':>8}")
    for clients, times in rows:
        d50, d99 = (percentile(times["direct"], q) * 1000 for q in (50, 99))
        g50, g99 = (percentile(times["gateway"], q) * 1000 for q in (50, 99))
        a50, a99 = (percentile(times["paired"], q) * 1000 for q in (50, 99))
        print(f"{clients:>7} {'direct: retriever + generator':<34} {d50:>8.1f} {d99:>8.1f}")
        print(f"{clients:>7} {'gateway: /v1/query':<34} {g50:>8.1f} {g99:>8.1f}")
        print(f"{clients:>7} {'difference of the two':<34} {g50 - d50:>8.1f} {g99 - d99:>8.1f}")
        print(f"{clients:>7} {'added, per request (Server-Timing)':<34} {a50:>8.1f} {a99:>8.1f}")
        stages = sorted(k for k in times if k.startswith("stage "))
        print(
            f"{'':>7} in the gateway, p50 ms: "
            + ", ".join(f"{k[6:]} {percentile(times[k], 50) * 1000:.1f}" for k in stages)
        )
    means = stage_means(metrics)
    print("gateway stage means (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    return 0


async def run_all(
    args: argparse.Namespace,
    config: GatewayConfig,
    retriever_url: str,
    generator: GeneratorProcess,
    gateway_url: str,
) -> list[tuple[int, dict[str, list[float]]]]:
    client = GeneratorClient(generator.http, None, model="ensemble", timeout=600)
    direct = Direct(retriever_url, client, config)
    rows = []
    try:
        await measure(direct, gateway_url, 4, 24)  # warm-up: connections, caches, JIT paths
        for clients in args.concurrency:
            rows.append((clients, await measure(direct, gateway_url, clients, args.requests)))
    finally:
        await client.close()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
