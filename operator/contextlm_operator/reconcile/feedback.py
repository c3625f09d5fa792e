"""Feedback counts for status, read from the PostgreSQL store the deployment names.

The operator reads the DSN from the Secret the ContextualDeployment names (and no other)
and runs one grouped COUNT per reconcile; status is patched only when a count changed,
so traffic on the gateway never churns status. The embedded SQLite store lives on the
gateway's volume and is not read from here.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import datetime
from typing import Any

from contextlm.api.common import SecretKeySelector

from .. import kube

log = logging.getLogger(__name__)
_stores: dict[str, Any] = {}
_lock = threading.Lock()


def read_secret_key(namespace: str, ref: SecretKeySelector) -> str | None:
    secret = kube.get("v1", "Secret", namespace, ref.name)
    if secret is None:
        return None
    if ref.key in (secret.get("stringData") or {}):
        return str(secret["stringData"][ref.key])
    raw = (secret.get("data") or {}).get(ref.key)
    return base64.b64decode(raw).decode() if raw else None


def feedback_counts(
    namespace: str, deployment: str, dsn: str, *, since: datetime | None = None
) -> dict[str, int] | None:
    """{up, down, corrections} of one deployment (since a time), or None if the store
    can't be read."""
    from contextlm.runtime.feedback.store import FeedbackStore, StoreUnavailable

    key = f"{dsn}#{namespace}/{deployment}"
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = FeedbackStore.open(dsn, deployment=f"{namespace}/{deployment}", pool_size=1)
            _stores[key] = store
    try:
        counts = store.counts(since=since)
    except StoreUnavailable as exc:
        log.warning("feedback store of %s/%s unavailable: %s", namespace, deployment, exc)
        return None
    return {"up": counts.up, "down": counts.down, "corrections": counts.corrections}
