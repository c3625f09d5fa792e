"""The resource models: examples validate, malformed resources are refused with the field."""

from __future__ import annotations

from typing import Any

import pytest
from cel_sim import apply_defaults, failed_rules
from conftest import load_bad_cases, load_examples

from contextlm.api import InvalidResource, validate_manifest
from contextlm.api.common import Model
from contextlm.api.crdgen import crd_for
from contextlm.api.resources import KIND_BY_NAME, KINDS

EXAMPLES = load_examples()
BAD_CASES = load_bad_cases()


def _root_schema(kind: str) -> dict[str, Any]:
    crd = crd_for(KIND_BY_NAME[kind])
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_table_is_big_enough_and_covers_every_kind() -> None:
    assert len(BAD_CASES) >= 30
    assert {c["resource"]["kind"] for c in BAD_CASES} == {k.name for k in KINDS}
    assert len({c["name"] for c in BAD_CASES}) == len(BAD_CASES)


def test_examples_cover_every_kind_in_both_sets() -> None:
    for folder in ("examples/production", "examples/quickstart"):
        kinds = {doc["kind"] for name, doc in EXAMPLES if name.startswith(folder)}
        assert kinds >= {"Corpus", "RetrievalStack", "AlignedModel", "ContextualDeployment"}


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_validates(name: str, doc: dict[str, Any]) -> None:
    obj = validate_manifest(doc)
    assert obj.model_dump(by_alias=True, exclude_none=True)["metadata"]["name"]


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_passes_every_cel_rule_after_schema_defaulting(
    name: str, doc: dict[str, Any]
) -> None:
    schema = _root_schema(doc["kind"])
    assert failed_rules(schema, apply_defaults(schema, dict(doc))) == []


@pytest.mark.parametrize("case", BAD_CASES, ids=[c["name"] for c in BAD_CASES])
def test_bad_resource_is_refused_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidResource) as caught:
        validate_manifest(case["resource"])
    paths = [e.path for e in caught.value.errors]
    assert any(
        p == case["field"] or p.startswith((case["field"] + ".", case["field"] + "["))
        for p in paths
    ), f"expected an error at {case['field']}, got {caught.value}"
    assert case["field"].split(".")[-1].split("[")[0] in str(caught.value)


@pytest.mark.parametrize("case", BAD_CASES, ids=[c["name"] for c in BAD_CASES])
def test_rule_failures_are_cel_failures_too(case: dict[str, Any]) -> None:
    """Where pydantic refuses through a cross-field Rule, the CRD's CEL refuses too."""
    with pytest.raises(InvalidResource) as caught:
        validate_manifest(case["resource"])
    rule_messages = [e.message for e in caught.value.errors]
    schema = _root_schema(case["resource"]["kind"])
    all_rule_messages = {r.message for cls in _subclasses(Model) for r in cls.rules if r.cel}
    expected = [m for m in rule_messages if m in all_rule_messages]
    if not expected:
        return  # refused by the schema's types and bounds, checked in e2e
    failures = failed_rules(schema, apply_defaults(schema, dict(case["resource"])))
    assert any(any(m in f for m in expected) for f in failures), failures


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_defaults_fill_in_a_minimal_stack() -> None:
    obj = validate_manifest(
        {
            "apiVersion": "contextlm.io/v1alpha1",
            "kind": "RetrievalStack",
            "metadata": {"name": "s"},
            "spec": {"corpusRef": {"name": "c"}, "retrievers": [{"name": "d", "dense": {}}]},
        }
    )
    spec = obj.model_dump(by_alias=True)["spec"]
    assert spec["topK"] == 10
    assert spec["fusion"] == {"method": "rrf", "rrfK": 60, "candidates": 50}
    assert spec["retrievers"][0]["dense"]["index"]["type"] == "hnsw"


def test_schema_defaults_match_model_defaults() -> None:
    """What the API server fills in equals what pydantic fills in."""
    for name, doc in EXAMPLES:
        schema = _root_schema(doc["kind"])
        server_side = apply_defaults(schema, {**doc, "spec": dict(doc["spec"])})
        model_side = validate_manifest(doc).model_dump(by_alias=True, exclude_none=True)
        assert _strip_empty(server_side["spec"]) == _strip_empty(model_side["spec"]), name


def _strip_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if v not in ({}, [], None)}
    if isinstance(value, list):
        return [_strip_empty(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("kind", "path", "schedule"),
    [
        ("AlignedModel", ("spec", "alignment", "trigger"), "61 * * * *"),
        ("AlignedModel", ("spec", "alignment", "trigger"), "* * 32 * *"),
        ("Corpus", ("spec", "refresh"), "0 3 * * mon-xyz"),
    ],
)
def test_a_cron_schedule_the_crd_pattern_lets_through_is_refused_by_the_operator(
    kind: str, path: tuple[str, ...], schedule: str
) -> None:
    """The CRD checks the five-field shape; each field's range only the models can
    check, so the operator reports InvalidSpec naming the field (not a crash)."""
    import copy

    doc = copy.deepcopy(next(d for _, d in EXAMPLES if d["kind"] == kind))
    node = doc
    for key in path:
        node = node.setdefault(key, {})
    node["schedule"] = schedule
    with pytest.raises(InvalidResource) as caught:
        validate_manifest(doc)
    field = ".".join(path) + ".schedule"
    assert any(e.path == field for e in caught.value.errors), str(caught.value)
    assert f"'{schedule}' is not a cron schedule" in str(caught.value)
