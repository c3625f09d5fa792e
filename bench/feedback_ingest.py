"""Feedback ingest: acknowledged feedback posts per second into a real PostgreSQL, at 32
concurrent clients, two ways in one run:

1. baseline: the store API called directly from 32 threads (FeedbackStore.add_feedback,
   INSERT … ON CONFLICT DO NOTHING RETURNING, one commit each), no HTTP;
2. `contextlm gateway` as a process: 32 asyncio clients POST /v1/feedback with an
   idempotency key each, counting only 2xx answers (each one a committed row).

PostgreSQL is the Debian build that the test suite uses (`e2e/cluster/build apt`),
started in a temporary directory with its default settings (fsync on).

    python bench/feedback_ingest.py [--posts 4000] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "runtime"), str(ROOT / "bench")]

from common import percentile
from feedback_helpers import answer, fresh_postgres, open_migrated
from gateway_helpers import MINILM, GatewayProcess, deployment_spec
from servers import free_port, run_postgres

from contextlm.runtime.config import GatewayConfig
from contextlm.runtime.feedback.store import FeedbackInput, FeedbackStore


def direct(
    dsn: str, queries: Sequence[uuid.UUID], posts: int, clients: int
) -> tuple[float, list[float]]:
    store = FeedbackStore.open(dsn, deployment="bench/direct", pool_size=clients)
    for q in queries:  # the direct deployment needs its own answers
        store.record_answer(answer(query_id=q))
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(posts))

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            store.add_feedback(
                FeedbackInput(queries[i % len(queries)], "up" if i % 2 else "down", f"d-{i}")
            )
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    store.close()
    return posts / elapsed, latencies


async def through_gateway(
    url: str, queries: Sequence[uuid.UUID], posts: int, clients: int
) -> tuple[float, list[float], int]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    work = iter(range(posts))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for i in work:
            body = {
                "query_id": str(queries[i % len(queries)]),
                "rating": "up" if i % 2 else "down",
                "idempotency_key": f"g-{i}",
            }
            start = time.perf_counter()
            async with session.post(f"{url}/v1/feedback", json=body) as response:
                await response.read()
                if response.status in (200, 201):
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--pool", type=int, default=16, help="gateway store connections")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="contextlm-bench-feedback-"))
    with run_postgres() as server:
        dsn = fresh_postgres(server)
        store = open_migrated(dsn, "bench/gateway")
        queries = [uuid.uuid4() for _ in range(200)]
        for q in queries:
            store.record_answer(answer(query_id=q))
        store.close()
        rate_direct, lat_direct = direct(dsn, queries, args.posts, args.clients)
        config = GatewayConfig(
            namespace="bench",
            deployment="gateway",
            spec=deployment_spec(),
            retriever_url=f"http://127.0.0.1:{free_port()}",  # feedback never calls it
            generator_url=f"127.0.0.1:{free_port()}",
            tokenizer=MINILM,
            store_pool_size=args.pool,
        )
        gateway = GatewayProcess(config, work / "gateway", dsn=dsn)
        try:
            gateway.wait()
            rate_gw, lat_gw, failures = asyncio.run(
                through_gateway(gateway.url, queries, args.posts, args.clients)
            )
        finally:
            gateway.stop()

    print(f"feedback ingest into PostgreSQL, {args.posts} posts, {args.clients} concurrent clients")
    print(f"{'path':<34} {'acked/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rate, lat in (
        ("store API direct (32 threads)", rate_direct, lat_direct),
        ("gateway POST /v1/feedback", rate_gw, lat_gw),
    ):
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        print(f"{name:<34} {rate:>9.0f} {p50:>8.1f} {p99:>8.1f}")
    print(f"non-2xx answers through the gateway: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
