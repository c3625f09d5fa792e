"""`contextlm export`: a window of feedback as the datasets an AlignmentRun trains on.

What the gateway recorded becomes two kinds of rows, each with the exact prompt text the
model was sent (chat template, system prompt and numbered context included), so training
sees what the model saw:

* thumbs rows, for KTO: `(prompt, completion=answer, label=rating == "up")`;
* pairs, for APO / DPO / SFT: `(prompt, chosen=correction, rejected=answer)` for every
  feedback that carries a correction differing from the answer.

De-duplication, in this order: when one answer (query id) was judged more than once, the
latest feedback stands (a user changing their mind, or a client retrying with a fresh
key); then rows with the same content (prompt, completion and label, or prompt, chosen and
rejected) are kept once, the earliest. Every dropped row counts in `duplicatesDropped`.

The held-out split is a function of the query id alone (SHA-256 of its text, read as a
fraction of 2^64, held out when below the fraction), so re-exporting a window, or a wider
window that contains it, puts every answer on the same side, and a pair and the thumbs
row of the same answer never end up on opposite sides.

Files under `alignment/<ns>/<model>/runs/<run>/dataset/`: `kto-train.jsonl`,
`kto-heldout.jsonl`, `pairs-train.jsonl`, `pairs-heldout.jsonl`, then `manifest.json`
(window, counts, file hashes) last. The result line carries the counts in the shape of
the AlignmentRun's `status.dataset`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..artifacts import content_hash, run_prefix

if TYPE_CHECKING:
    from ..config import ExportConfig
    from ..store import ArtifactStore
    from .store import FeedbackRow

log = logging.getLogger("contextlm.export")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
FILES = ("kto-train.jsonl", "kto-heldout.jsonl", "pairs-train.jsonl", "pairs-heldout.jsonl")
FORMAT = "1"


def is_held_out(query_id: uuid.UUID | str, fraction: float) -> bool:
    """Whether an answer belongs to the held-out split: stable for a query id."""
    digest = hashlib.sha256(str(query_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class Counts:
    """The AlignmentRun's `status.dataset` (both splits together) plus the train split."""

    desirable: int = 0
    undesirable: int = 0
    pairs: int = 0
    held_out: int = 0
    duplicates_dropped: int = 0
    train_desirable: int = 0
    train_undesirable: int = 0
    train_pairs: int = 0

    def status(self) -> dict[str, int]:
        return {
            "desirable": self.desirable,
            "undesirable": self.undesirable,
            "pairs": self.pairs,
            "heldOut": self.held_out,
            "duplicatesDropped": self.duplicates_dropped,
        }

    def train(self) -> dict[str, int]:
        return {
            "desirable": self.train_desirable,
            "undesirable": self.train_undesirable,
            "pairs": self.train_pairs,
        }


@dataclass
class Dataset:
    kto_train: list[dict[str, Any]] = field(default_factory=list)
    kto_heldout: list[dict[str, Any]] = field(default_factory=list)
    pairs_train: list[dict[str, Any]] = field(default_factory=list)
    pairs_heldout: list[dict[str, Any]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    def files(self) -> dict[str, list[dict[str, Any]]]:
        return dict(
            zip(
                FILES,
                (self.kto_train, self.kto_heldout, self.pairs_train, self.pairs_heldout),
                strict=True,
            )
        )


def _meta(row: FeedbackRow) -> dict[str, Any]:
    return {
        "queryId": str(row.query_id),
        "feedbackId": str(row.feedback_id),
        "createdAt": row.created_at.isoformat(),
        "modelRevision": row.model_revision,
        "indexVersion": row.index_version,
    }


def build_dataset(rows: Iterable[FeedbackRow], *, held_out_fraction: float) -> Dataset:
    """Thumbs rows and pairs from feedback rows given oldest first (see the module doc)."""
    latest: dict[uuid.UUID, FeedbackRow] = {}
    data = Dataset()
    for row in rows:
        if row.query_id in latest:
            data.counts.duplicates_dropped += 1
        latest[row.query_id] = row
    seen_thumbs: set[tuple[str, str, bool]] = set()
    seen_pairs: set[tuple[str, str, str]] = set()
    for row in sorted(latest.values(), key=lambda r: (r.created_at, str(r.feedback_id))):
        if not row.prompt or not row.answer.strip():
            continue
        held = is_held_out(row.query_id, held_out_fraction)
        label = row.rating == "up"
        if (row.prompt, row.answer, label) in seen_thumbs:
            data.counts.duplicates_dropped += 1
        else:
            seen_thumbs.add((row.prompt, row.answer, label))
            _add_thumbs(data, row, label=label, held=held)
        correction = (row.correction or "").strip()
        if not correction or correction == row.answer.strip():
            continue
        if (row.prompt, correction, row.answer) in seen_pairs:
            data.counts.duplicates_dropped += 1
            continue
        seen_pairs.add((row.prompt, correction, row.answer))
        _add_pair(data, row, correction=correction, held=held)
    return data


def _add_thumbs(data: Dataset, row: FeedbackRow, *, label: bool, held: bool) -> None:
    item = {"prompt": row.prompt, "completion": row.answer, "label": label, **_meta(row)}
    counts = data.counts
    if label:
        counts.desirable += 1
    else:
        counts.undesirable += 1
    if held:
        data.kto_heldout.append(item)
        counts.held_out += 1
    else:
        data.kto_train.append(item)
        counts.train_desirable += label
        counts.train_undesirable += not label


def _add_pair(data: Dataset, row: FeedbackRow, *, correction: str, held: bool) -> None:
    item = {"prompt": row.prompt, "chosen": correction, "rejected": row.answer, **_meta(row)}
    data.counts.pairs += 1
    if held:
        data.pairs_heldout.append(item)
        data.counts.held_out += 1
    else:
        data.pairs_train.append(item)
        data.counts.train_pairs += 1


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(
        json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in rows
    )


def read_jsonl(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    """Rows of a dataset file; a file the export left out (no rows) reads as empty."""
    if not store.exists(key):
        return []
    return [json.loads(line) for line in store.get_bytes(key).splitlines() if line.strip()]


def dataset_prefix(namespace: str, model: str, run: str) -> str:
    return f"{run_prefix(namespace, model, run)}/dataset"


def last_window_end(store: ArtifactStore, namespace: str, model: str) -> dt.datetime | None:
    """Where the model's latest published export window ended, if any."""
    base = f"alignment/{namespace}/{model}/runs/"
    ends: list[dt.datetime] = []
    for key in store.list(base):
        if key.endswith("/dataset/manifest.json"):
            manifest = json.loads(store.get_bytes(key))
            ends.append(dt.datetime.fromisoformat(manifest["window"]["until"]))
    return max(ends, default=None)


def publish(
    store: ArtifactStore,
    prefix: str,
    data: Dataset,
    *,
    window: dict[str, str | None],
    deployment: str,
    held_out_fraction: float,
) -> dict[str, Any]:
    """Upload the files, then the manifest. An export is keyed by its run, so a retried
    Job rewrites the same prefix; the manifest's `datasetId` hashes the content."""
    blobs = {name: jsonl(rows) for name, rows in data.files().items()}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    for name, blob in blobs.items():
        store.put_bytes(f"{prefix}/{name}", blob)
    manifest = {
        "format": FORMAT,
        "datasetId": content_hash(*(digests[n] for n in FILES), json.dumps(window)),
        "deployment": deployment,
        "window": window,
        "heldOutFraction": held_out_fraction,
        "counts": data.counts.status(),
        "train": data.counts.train(),
        "files": {
            name: {"sha256": digests[name], "rows": len(rows)}
            for name, rows in data.files().items()
        },
        "created": dt.datetime.now(dt.UTC).isoformat(),
    }
    store.publish(prefix, manifest)
    return manifest


def export(config: ExportConfig, store: ArtifactStore, rows_source: Any = None) -> dict[str, Any]:
    """Read the window, build the dataset, publish it; the result line."""
    until = config.until or dt.datetime.now(dt.UTC)
    since = config.since
    if since is None and config.since_last_run:
        since = last_window_end(store, config.namespace, config.model)
    source = rows_source or _open_feedback(config)
    try:
        rows = source.feedback_window(since=_aware(since), until=_aware(until))
        data = build_dataset(rows, held_out_fraction=config.held_out_fraction)
    finally:
        if rows_source is None:
            source.close()
    window = {"since": _iso(since), "until": _iso(until)}
    prefix = dataset_prefix(config.namespace, config.model, config.run)
    manifest = publish(
        store,
        prefix,
        data,
        window=window,
        deployment=config.feedback.deployment,
        held_out_fraction=config.held_out_fraction,
    )
    log.info("exported %s to %s: %s", window, prefix, manifest["counts"])
    return {
        "datasetPrefix": prefix,
        "datasetId": manifest["datasetId"],
        "since": window["since"],
        "until": window["until"],
        "dataset": manifest["counts"],
        "train": manifest["train"],
    }


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    aware = _aware(value)
    return aware.astimezone(dt.UTC).isoformat() if aware else None


def _open_feedback(config: ExportConfig) -> Any:
    from .store import FeedbackStore, sqlite_dsn

    source = config.feedback
    if source.backend == "sqlite":
        dsn = sqlite_dsn(source.sqlite_path)
    else:
        dsn = os.environ.get(source.dsn_env, "")
        if not dsn:
            raise SystemExit(f"contextlm export: ${source.dsn_env} is not set (the feedback DSN)")
    return FeedbackStore.open(dsn, deployment=source.deployment, pool_size=1)


# Process ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ..config import ExportConfig, load_config
    from ..store import StoreError, open_store
    from .store import StoreUnavailable

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    termination_log = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    config = load_config(ExportConfig, args.config)
    try:
        result = export(config, open_store(config.store))
    except (StoreUnavailable, StoreError, OSError, SQLAlchemyError) as exc:
        # Retryable: the database or the artifact store was unreachable; the Job retries.
        log.exception("export failed")
        return report({"error": type(exc).__name__, "reason": str(exc)}, termination_log, 1)
    return report(result, termination_log, 0)


def report(result: dict[str, Any], termination_log: str, code: int) -> int:
    """Print the one-line JSON result and leave it where Kubernetes reads it."""
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    try:
        with open(termination_log, "w") as handle:
            handle.write(line + "\n")
    except OSError:
        pass  # not in a pod: stdout has it
    return code
