"""GPU check of contextlm's embedding path: `Embedder` with device=auto must pick CUDA,
match sentence-transformers (on CUDA) and itself on CPU, and keep pace with
sentence-transformers; then a whole `build()` of the index on the GPU.

    python bench/gpu_embedding.py [--data DIR] [--config-dir DIR] [--batch 128]

Where the MiniLM weights are not on the GPU machine (they are too large to carry to a
lent one), it builds a MiniLM-shaped BERT with seeded random weights from the config and
tokenizer files in --config-dir: the same architecture, so the same cost.
Needs torch with CUDA, transformers, sentence-transformers, faiss-cpu, bm25s, PyStemmer
and pydantic; run from the repository root (it imports runtime/ from the source tree).
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, "runtime")
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse

import numpy as np
import torch
from transformers import BertConfig, BertModel

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="../shared/data/scifact")
parser.add_argument("--config-dir", required=True, help="MiniLM config.json + tokenizer files")
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--work", default="/tmp/contextlm-gpu-check")
args = parser.parse_args()
work = Path(args.work)
shutil.rmtree(work, ignore_errors=True)
model_dir = work / "minilm-random"
src = Path(args.config_dir)
torch.manual_seed(0)
BertModel(BertConfig.from_json_file(src / "config.json")).save_pretrained(model_dir)
for f in src.rglob("*"):
    if f.is_file() and f.name != "config.json":
        (model_dir / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, model_dir / f.relative_to(src))

texts = []
for line in (Path(args.data) / "corpus.jsonl").read_text().splitlines():
    d = json.loads(line)
    t = d["title"].strip()
    texts.append(f"{t}\n\n{d['text']}" if t else d["text"])
print("device:", torch.cuda.get_device_name(0), "texts:", len(texts))

from contextlm.runtime.embedding import Embedder

B = args.batch
e = Embedder(model_dir, device="auto")
print("Embedder device with device=auto:", e.device, flush=True)
e.encode(texts[:256], batch_size=B)
torch.cuda.synchronize()
t = time.perf_counter()
ours = e.encode(texts, batch_size=B)
torch.cuda.synchronize()
t_ours = time.perf_counter() - t

from sentence_transformers import SentenceTransformer

try:
    st = SentenceTransformer(str(model_dir), device="cuda")
except TypeError:  # this sentence-transformers release misreads the pooling config
    from sentence_transformers import models

    st = SentenceTransformer(
        modules=[
            models.Transformer(str(model_dir), max_seq_length=256),
            models.Pooling(384, "mean"),
            models.Normalize(),
        ],
        device="cuda",
    )
st.encode(texts[:256], batch_size=B)
torch.cuda.synchronize()
t = time.perf_counter()
ref = st.encode(texts, batch_size=B, normalize_embeddings=True)
torch.cuda.synchronize()
t_st = time.perf_counter() - t
cpu = Embedder(model_dir, device="cpu").encode(texts[:200], batch_size=32)
print(
    f"embedding only, batch {B}: contextlm Embedder {len(texts) / t_ours:.0f} chunks/s ({t_ours:.2f}s), "
    f"sentence-transformers {len(texts) / t_st:.0f} chunks/s ({t_st:.2f}s), ratio {t_st / t_ours:.2f}x"
)
print(
    f"max |ours(cuda) - st(cuda)| = {np.abs(ours - ref).max():.2e}; "
    f"max |ours(cuda) - ours(cpu)| = {np.abs(ours[:200] - cpu).max():.2e}"
)

# The whole `contextlm index` build on the GPU, local store.
from contextlm.api.retrieval_stack import RetrievalStackSpec
from contextlm.runtime.artifacts import Chunk, content_hash, snapshot_prefix
from contextlm.runtime.config import IndexConfig
from contextlm.runtime.index import build
from contextlm.runtime.store import LocalStore, StoreConfig

store = LocalStore(work / "store")
chunks = [
    Chunk(
        chunk_id=f"{i}-0",
        doc_id=str(i),
        uri=f"x://{i}",
        position=0,
        text=t,
        content_hash=content_hash(t),
    )
    for i, t in enumerate(texts)
]
body = "".join(c.model_dump_json() + "\n" for c in chunks)
sid = content_hash(body)
prefix = snapshot_prefix("bench", "scifact", sid)
store.put_bytes(f"{prefix}/chunks.jsonl", body.encode())
store.publish(prefix, {"snapshot_id": sid})
spec = RetrievalStackSpec.model_validate(
    {
        "corpusRef": {"name": "scifact"},
        "retrievers": [
            {
                "name": "dense",
                "dense": {
                    "embeddingModel": str(model_dir),
                    "batchSize": B,
                    "index": {"type": "hnsw"},
                },
            },
            {"name": "bm25", "sparse": {}},
        ],
    }
)
cfg = IndexConfig(
    namespace="bench",
    stack="gpu",
    corpus="scifact",
    snapshot_id=sid,
    spec=spec,
    store=StoreConfig(kind="local", path=str(work / "store")),
    work_dir=str(work / "index"),
    device="auto",
)
t = time.perf_counter()
result = build(cfg)
t_build = time.perf_counter() - t
print(
    f"contextlm index build() on cuda (embed + HNSW + BM25 + local store): {t_build:.2f}s, "
    f"{len(texts) / t_build:.0f} chunks/s; result {result}"
)
