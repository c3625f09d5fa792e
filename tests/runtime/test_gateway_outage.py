"""A PostgreSQL restart in the middle of 2,000 feedback posts through a real gateway
process: no acknowledged feedback is lost and none is stored twice.

32 concurrent clients post, each retrying on 503 and on connection errors with the same
idempotency key, as the API asks clients to. The answers the feedback refers to are
recorded through the store API first (the feedback path never calls the retriever or the
generator, so this gateway points at closed ports for them).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import psycopg
import pytest
from feedback_helpers import answer, fresh_postgres, open_migrated
from gateway_helpers import MINILM, GatewayProcess, deployment_spec
from servers import PostgresServer, free_port

from contextlm.runtime.config import GatewayConfig

pytestmark = pytest.mark.integration

POSTS = 2000
CLIENTS = 32
DEADLINE_S = 240


class Tally:
    def __init__(self) -> None:
        self.acked: dict[str, str] = {}  # idempotency key -> feedback id acknowledged
        self.codes: Counter[int | str] = Counter()


async def post_all(url: str, queries: list[uuid.UUID], tally: Tally) -> None:
    work: asyncio.Queue[int] = asyncio.Queue()
    for i in range(POSTS):
        work.put_nowait(i)
    deadline = time.monotonic() + DEADLINE_S
    timeout = aiohttp.ClientTimeout(total=10)

    async def client() -> None:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not work.empty():
                i = work.get_nowait()
                key = f"outage-{i}"
                body = {
                    "query_id": str(queries[i % len(queries)]),
                    "rating": "up" if i % 3 else "down",
                }
                if i % 7 == 0:
                    body["correction"] = f"correction {i}"
                while time.monotonic() < deadline:
                    try:
                        async with session.post(
                            f"{url}/v1/feedback", json=body, headers={"Idempotency-Key": key}
                        ) as response:
                            tally.codes[response.status] += 1
                            if response.status in (200, 201):
                                tally.acked[key] = (await response.json())["feedback_id"]
                                break
                            assert response.status == 503, await response.text()
                            assert response.headers.get("Retry-After")
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        tally.codes[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


def restart_when(server: PostgresServer, tally: Tally, at: int, events: list[str]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while len(tally.acked) < at and time.monotonic() < deadline:
        time.sleep(0.01)
    events.append(f"stopping at {len(tally.acked)} acknowledged")
    server.stop()
    time.sleep(3)
    events.append(f"starting at {len(tally.acked)} acknowledged")
    server.start()
    events.append(f"started at {len(tally.acked)} acknowledged")


def test_postgres_restart_during_feedback_stream(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    dsn = fresh_postgres(postgres_server)
    store = open_migrated(dsn, "default/docs")
    records = [answer() for _ in range(50)]
    for record in records:
        store.record_answer(record)
    store.close()
    config = GatewayConfig(
        namespace="default",
        deployment="docs",
        spec=deployment_spec(),
        retriever_url=f"http://127.0.0.1:{free_port()}",
        generator_url=f"127.0.0.1:{free_port()}",
        tokenizer=MINILM,
        store_pool_size=8,
    )
    gateway = GatewayProcess(config, tmp_path / "gateway", dsn=dsn)
    tally, events = Tally(), []
    try:
        gateway.wait()
        restarter = threading.Thread(
            target=restart_when, args=(postgres_server, tally, POSTS // 4, events)
        )
        restarter.start()
        asyncio.run(post_all(gateway.url, [r.query_id for r in records], tally))
        restarter.join()
    finally:
        gateway.stop()
    print(events, dict(tally.codes))
    assert len(events) == 3, events
    assert tally.codes[503] > 0, f"the outage was never seen: {tally.codes}"
    assert len(tally.acked) == POSTS, f"only {len(tally.acked)} acknowledged: {tally.codes}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT idempotency_key, id::text FROM feedback").fetchall()
    stored = Counter(key for key, _ in rows)
    assert not [k for k, n in stored.items() if n > 1], "duplicated feedback"
    assert len(rows) == POSTS
    ids = dict(rows)
    lost = [k for k in tally.acked if k not in ids]
    assert not lost, f"{len(lost)} acknowledged feedback lost, e.g. {lost[:5]}"
    wrong = [k for k, fid in tally.acked.items() if ids[k] != fid]
    assert not wrong, f"acknowledged ids differ from the stored ones for {wrong[:5]}"
