"""An idle operator writes nothing: a child is applied only when the live object does
not already hold its manifest (and still when it drifted or the manifest changed), and
status only when what the server stores would change."""

from __future__ import annotations

import copy
from typing import Any

from contextlm_operator.kube import APPLIED, holds, unchanged, with_digest
from contextlm_operator.reconcile.common import stored


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "m-generator",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/component": "generator"},
            "ownerReferences": [{"kind": "AlignedModel", "name": "m", "uid": "u1"}],
        },
        "spec": {
            "selector": {"app.kubernetes.io/instance": "m"},
            "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
            "extra": {},
            "sidecars": [],
        },
    }


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """What the server returns after applying `desired`: defaults, server fields,
    others' fields, empty values dropped."""
    live = copy.deepcopy(desired)
    live["metadata"].update(resourceVersion="7", uid="u2", managedFields=[{"manager": "x"}])
    live["metadata"]["labels"]["someone-else"] = "theirs"
    live["spec"]["ports"][0]["protocol"] = "TCP"
    live["spec"]["clusterIP"] = "10.0.0.9"
    del live["spec"]["sidecars"]
    live["status"] = {"loadBalancer": {}}
    return live


def test_a_live_object_holding_the_manifest_needs_no_apply() -> None:
    desired = with_digest(_service())
    assert unchanged(_live(desired), desired)


def test_drift_in_a_field_we_set_is_repaired() -> None:
    desired = with_digest(_service())
    changed = _live(desired)
    changed["spec"]["ports"][0]["port"] = 9000
    assert not unchanged(changed, desired)

    removed = _live(desired)
    del removed["metadata"]["labels"]["app.kubernetes.io/component"]
    assert not unchanged(removed, desired)

    extra_port = _live(desired)
    extra_port["spec"]["ports"].append({"name": "debug", "port": 5678})
    assert not unchanged(extra_port, desired)


def test_a_missing_object_is_applied() -> None:
    assert not unchanged(None, with_digest(_service()))


def test_a_field_dropped_from_the_manifest_is_applied_to_release_it() -> None:
    # Autoscaling turned on: `replicas` leaves the manifest, and the server must be told
    # so (the apply releases it to the autoscaler). The live object still holds every
    # remaining field; only the digest says the manifest changed.
    before = _service()
    before["spec"]["replicas"] = 2
    live = _live(with_digest(before))
    after = with_digest(_service())
    assert holds(live["spec"], after["spec"])
    assert not unchanged(live, after)


def test_the_digest_covers_the_whole_manifest_and_nothing_else() -> None:
    one, two = _service(), _service()
    two["spec"]["ports"][0]["port"] = 8001
    assert (
        with_digest(one)["metadata"]["annotations"][APPLIED]
        != (with_digest(two)["metadata"]["annotations"][APPLIED])
    )
    assert with_digest(one) == with_digest(_service())
    assert APPLIED not in one["metadata"].get("annotations", {})  # input left alone


def test_a_status_field_set_to_null_is_compared_as_the_server_stores_it() -> None:
    # Merge patch: a null member deletes the key. The transformers engine reports
    # engineId None, which the server never stores; compared as sent, status would be
    # patched on every timer tick.
    sent = {"state": "Ready", "engineId": None, "message": "no engine build"}
    assert stored(sent) == {"state": "Ready", "message": "no engine build"}
    assert stored({"a": {"b": None, "c": [None, 1]}}) == {"a": {"c": [None, 1]}}
    assert stored(None) is None and stored("x") == "x"
