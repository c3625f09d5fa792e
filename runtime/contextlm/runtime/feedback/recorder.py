"""The gateway's side of the store: async calls on a thread pool, and answers kept in
memory while the store is down.

An answer is recorded before it is returned. When the store cannot take it, the answer
is still given (a database outage should not stop questions being answered), marked
`recorded: false`, and kept in a bounded buffer that a background task flushes once the
store is back. Feedback on such an answer first writes the answer, so it never meets a
404 for an answer this replica gave. Feedback itself is never buffered: it is acknowledged
only after its own commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .store import AnswerRecord, FeedbackInput, FeedbackStore, StoredFeedback, StoreUnavailable

log = logging.getLogger("contextlm.gateway.recorder")
T = TypeVar("T")


class Recorder:
    def __init__(
        self,
        store: FeedbackStore,
        *,
        threads: int,
        max_pending: int = 10_000,
        on_pending: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self.pending: OrderedDict[uuid.UUID, AnswerRecord] = OrderedDict()
        self.max_pending = max_pending
        self.dropped = 0
        self.on_pending = on_pending or (lambda _n: None)

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def record(self, record: AnswerRecord) -> bool:
        """True when the answer is committed; False when it waits in memory."""
        try:
            await self.call(lambda: self.store.record_answer(record))
            return True
        except StoreUnavailable as exc:
            log.warning("answer %s kept for later: %s", record.query_id, exc)
            self._keep(record)
            return False

    def _keep(self, record: AnswerRecord) -> None:
        self.pending[record.query_id] = record
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.dropped += 1
        self.on_pending(len(self.pending))

    async def add_feedback(self, item: FeedbackInput) -> StoredFeedback:
        """Commit a feedback (its answer first, if that still waits); raises
        StoreUnavailable, UnknownQuery or IdempotencyConflict."""
        waiting = self.pending.get(item.query_id)
        if waiting is not None:
            await self.call(lambda: self.store.record_answer(waiting))
            self._forget(item.query_id)
        return await self.call(lambda: self.store.add_feedback(item))

    def _forget(self, query_id: uuid.UUID) -> None:
        self.pending.pop(query_id, None)
        self.on_pending(len(self.pending))

    async def flush(self) -> int:
        """Write waiting answers, oldest first, until the store refuses one."""
        written = 0
        for query_id, record in list(self.pending.items()):
            try:
                await self.call(functools.partial(self.store.record_answer, record))
            except StoreUnavailable:
                break
            self._forget(query_id)
            written += 1
        return written

    async def flush_forever(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.pending:
                written = await self.flush()
                if written:
                    log.info("recorded %d answers kept during a store outage", written)

    def close(self) -> None:
        if self.pending:
            log.warning("%d answers were never recorded (store unavailable)", len(self.pending))
        self.executor.shutdown(wait=True)
        self.store.close()
