"""The e2e kubelet's pure helpers, which the cluster tests rely on without showing."""

from __future__ import annotations

import pytest
from harness.podinputs import expand, quantity
from harness.podworker import PodWorker


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$(A)-$(B)", "1-2"),
        ("$$(A)", "$(A)"),  # $$ escapes
        ("$(MISSING)", "$(MISSING)"),  # undefined references stay as written
        ("plain $A", "plain $A"),
    ],
)
def test_expand_follows_kubernetes_rules(value: str, expected: str) -> None:
    assert expand(value, {"A": "1", "B": "2"}) == expected


@pytest.mark.parametrize(("text", "value"), [("500m", 0.5), ("2", 2), ("1Gi", 2**30), ("1k", 1000)])
def test_quantity(text: str, value: float) -> None:
    assert quantity(text) == value


def test_rewrite_maps_mount_paths_only_at_path_boundaries() -> None:
    mapping = [("/data", "/tmp/pod/volumes/data")]
    assert PodWorker.rewrite("/data/x.txt", mapping) == "/tmp/pod/volumes/data/x.txt"
    assert PodWorker.rewrite("--out=/data", mapping) == "--out=/tmp/pod/volumes/data"
    assert PodWorker.rewrite("/database", mapping) == "/database"
