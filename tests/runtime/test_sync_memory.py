"""Streaming: the sync's memory does not grow with the number of documents.

The same generator makes a 200- and a 2,000-document corpus; the peak of Python
allocations (tracemalloc) during each sync must be about the same, and the resident set
sampled while the big one runs must stay flat after the first documents. A sync that
kept chunks, texts or per-document records in memory would grow tenfold between the
two. No wall-clock time is asserted.
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

from sync_support import sync_config, tokenizer

from contextlm.runtime.store import LocalStore
from contextlm.runtime.sync import SyncResult, sync

VOCABULARY = [
    *("alpha", "beta", "gamma", "delta", "epsilon", "kubernetes", "retrieval", "snapshot"),
    *("chunk", "token", "corpus", "index", "operator", "refund", "parcel", "invoice"),
    *("warehouse", "courier", "latency", "replica"),
]
MiB = 1024 * 1024


def generate(root: Path, count: int) -> None:
    """`count` distinct ~1 KB markdown documents (two sections, three paragraphs)."""
    rnd = random.Random(count)
    root.mkdir(parents=True)
    for i in range(count):
        paragraphs = [
            " ".join(rnd.choice(VOCABULARY) for _ in range(40)) + f" document {i} part {j}."
            for j in range(3)
        ]
        body = "\n\n".join(paragraphs)
        (root / f"{i // 100:03d}" / f"doc-{i:05d}.md").parent.mkdir(exist_ok=True)
        (root / f"{i // 100:03d}" / f"doc-{i:05d}.md").write_text(
            f"# Document {i}\n\n{body}\n\n## Summary\n\n{paragraphs[0]}\n"
        )


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def measured_sync(
    tmp: Path, count: int, samples: list[int] | None = None
) -> tuple[SyncResult, int]:
    generate(tmp / "src", count)
    config = sync_config(
        tmp,
        source={"pvc": {"claimName": "docs"}},
        source_path=str(tmp / "src"),
        extraction={"chunking": {"size": 64, "overlap": 8}},
    )

    def sample(index: int) -> None:
        if samples is not None and index % 50 == 0:
            samples.append(rss())

    tracemalloc.start()
    try:
        result = sync(
            config,
            store=LocalStore(config.store.path),
            tokenizer=tokenizer(),
            after_document=sample,
            progress_every=10**9,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    tokenizer()  # loaded (transformers imported) before tracing: slow under tracemalloc
    measured_sync(tmp_path / "warmup", 20)  # imports and caches are not the corpus's
    small, small_peak = measured_sync(tmp_path / "small", 200)
    samples: list[int] = []
    big, big_peak = measured_sync(tmp_path / "big", 2000, samples)

    assert small.documents == 200 and big.documents == 2000
    assert big.chunks > 9 * small.chunks  # ten times the work really was done
    print(
        f"\nsync memory: tracemalloc peak {small_peak / MiB:.2f} MiB for 200 documents"
        f" ({small.chunks} chunks), {big_peak / MiB:.2f} MiB for 2,000 ({big.chunks} chunks);"
        f" RSS after 100 documents {samples[1] / MiB:.1f} MiB, max {max(samples) / MiB:.1f}"
        f" MiB, growth {(max(samples) - samples[1]) / MiB:.1f} MiB"
    )
    assert big_peak < 1.5 * small_peak + 1 * MiB
    assert big_peak < 8 * MiB
    # RSS also counts the Rust tokenizer and SQLite; after warm-up it must stay flat.
    assert max(samples) - samples[1] < 32 * MiB
