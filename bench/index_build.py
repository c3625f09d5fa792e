"""Index build throughput: `contextlm index` (the CLI process, end to end: snapshot read
from the store, embedding, HNSW + BM25 build, upload, manifest) against plain
sentence-transformers `encode` of the same chunk texts (model load excluded), same run,
same machine; and whether the vectors agree.

    python bench/index_build.py [--limit N] [--store auto|s3|local] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    NAMESPACE,
    add_common_arguments,
    artifact_store,
    load_scifact,
    publish_snapshot,
    run_index,
    spec,
    workdir,
)

from contextlm.runtime.artifacts import index_prefix
from contextlm.runtime.store import open_store


def baseline(texts_file: Path, out: Path, batch_size: int) -> int:
    """Runs in its own interpreter: sentence-transformers encode, timed without the load."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from contextlm.runtime.models import resolve_model

    texts = json.loads(texts_file.read_text())
    model = SentenceTransformer(str(resolve_model("all-MiniLM-L6-v2")), device="cpu")
    model.encode(texts[:32], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    seconds = time.perf_counter() - start
    np.save(out, vectors)
    print(f"RESULT {seconds}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return baseline(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import numpy as np

    data = load_scifact(args.data, limit=args.limit)
    texts = [c.text for c in data.chunks]
    stack = spec(
        retrievers=[
            {"name": "dense", "dense": {"index": {"type": "hnsw"}, "batchSize": args.batch_size}},
            {"name": "bm25", "sparse": {"bm25": {}}},
        ]
    )
    with workdir(args.work) as work, artifact_store(args.store, work) as (store, where):
        print(
            f"corpus: {len(texts)} abstracts; store: {where}; "
            f"load average before: {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        snapshot = publish_snapshot(store, data.chunks)
        name = f"build-{time.time_ns()}"  # a fresh stack: nothing to reuse
        built, ours = run_index(store, work, snapshot, stack, name=name)
        assert built["embedded"] == len(texts), built

        texts_file, vectors_file = work / "texts.json", work / "st.npy"
        texts_file.write_text(json.dumps(texts))
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                str(texts_file),
                str(vectors_file),
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=False,
            # The same OpenMP setting as `contextlm index` (see contextlm.runtime.embedding).
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"baseline failed: {done.stderr[-2000:]}")
        theirs = float(line[0].split()[1])

        prefix = index_prefix(NAMESPACE, name, built["indexVersion"])
        local = work / "ours.npy"
        open_store(store).get_file(f"{prefix}/dense-dense/embeddings.npy", local)
        diff = float(np.abs(np.load(local) - np.load(vectors_file)).max())

    n = len(texts)
    print(
        f"\nindex build, {n} SciFact abstracts (title + abstract), batch {args.batch_size}, CPU; "
        f"load average after: {os.getloadavg()[0]:.1f}"
    )
    print(f"{'':62} {'seconds':>8} {'chunks/s':>9}")
    print(
        f"{'contextlm index (CLI end to end: embed + HNSW + BM25 + upload)':62} "
        f"{ours:8.1f} {n / ours:9.1f}"
    )
    print(
        f"{'sentence-transformers encode (embedding only, model loaded)':62} "
        f"{theirs:8.1f} {n / theirs:9.1f}"
    )
    print(f"ratio contextlm / sentence-transformers: {theirs / ours:.2f}x (goal >= 0.85x)")
    print(f"max |difference| between the two sets of vectors: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
