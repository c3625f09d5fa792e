"""The generated CRDs: up to date, structural, and complete enough for kubectl users."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cel_sim import program
from kubernetes.client import ApiClient

from contextlm.api.crdgen import all_crds, structural
from contextlm.crds import check_crds, expected_files

CRDS = all_crds()
IDS = [c["metadata"]["name"] for c in CRDS]
FORBIDDEN = {"$ref", "$defs", "allOf", "oneOf", "not", "title", "uniqueItems", "propertyNames"}
# Short names kubectl already uses for built-in kinds; ours must not shadow them.
BUILTIN_SHORT_NAMES = {
    "cm",
    "cs",
    "csr",
    "ds",
    "deploy",
    "ep",
    "ev",
    "hpa",
    "ing",
    "limits",
    "netpol",
    "no",
    "ns",
    "pc",
    "pdb",
    "po",
    "pv",
    "pvc",
    "quota",
    "rc",
    "rs",
    "sa",
    "sc",
    "sts",
    "svc",
    "crd",
    "crds",
}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_generated_files_are_up_to_date(repo_root: Path) -> None:
    assert check_crds(repo_root) == [], "run `contextlm crds` and commit the result"


def test_check_notices_a_hand_edit(tmp_path: Path) -> None:
    files = expected_files(tmp_path)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert check_crds(tmp_path) == []
    victim = min(files)
    victim.write_text(victim.read_text().replace("maxLength: 253", "maxLength: 254", 1))
    (tmp_path / "crds/contextlm.io_leftovers.yaml").write_text("{}")
    assert check_crds(tmp_path) == sorted([victim, tmp_path / "crds/contextlm.io_leftovers.yaml"])


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_crd_deserializes_as_apiextensions_v1(crd: dict[str, Any]) -> None:
    obj = ApiClient().deserialize(json.dumps(crd), "V1CustomResourceDefinition", "application/json")
    assert obj.spec.versions[0].subresources.status == {}
    assert obj.spec.scope == "Namespaced"


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    for path, node in _nodes(_root(crd)):
        assert not FORBIDDEN & node.keys(), f"{path}: {FORBIDDEN & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path
    spec = _root(crd)["properties"]["spec"]
    assert not any(n.get("x-kubernetes-preserve-unknown-fields") for _, n in _nodes(spec))


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_every_value_is_bounded_so_cel_cost_is_bounded(crd: dict[str, Any]) -> None:
    for path, node in _nodes(
        {"properties": {k: _root(crd)["properties"][k] for k in ("spec", "status")}}
    ):
        if (
            node.get("type") == "string"
            and "enum" not in node
            and node.get("format") != "date-time"
        ):
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: array without maxItems"
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path}: map without maxProperties"


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_every_field_is_described(crd: dict[str, Any]) -> None:
    for path, node in _nodes(_root(crd)["properties"]["spec"]):
        if path and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"spec{path} has no description for kubectl explain"


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_cel_rules_compile(crd: dict[str, Any]) -> None:
    rules = [r for _, n in _nodes(_root(crd)) for r in n.get("x-kubernetes-validations", [])]
    assert rules
    for rule in rules:
        program(rule["rule"])
        assert rule["message"]


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_list_maps_have_required_keys(crd: dict[str, Any]) -> None:
    for path, node in _nodes(_root(crd)):
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                item = node["items"]
                assert key in item.get("required", []) or "default" in item["properties"][key], path


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in json_path.strip(".").split("."):
        name = part.split("[")[0]
        if node is None:
            return None
        node = node.get("properties", {}).get(name)
        if node is not None and "[" in part:
            node = node.get("items")
    return node


@pytest.mark.parametrize("crd", CRDS, ids=IDS)
def test_printer_columns_and_scale_paths_exist(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    root = _root(crd)
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Phase", "Age"} <= set(names)
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".metadata"):
            continue
        if "?(" in path:  # the Ready column filters conditions by type
            assert _resolve(root, ".status.conditions") is not None
            continue
        node = _resolve(root, path)
        assert node is not None, f"{column['name']}: {path} is not in the schema"
    scale = version["subresources"].get("scale")
    if scale:
        assert _resolve(root, scale["specReplicasPath"])["type"] == "integer"  # type: ignore[index]
        assert _resolve(root, scale["statusReplicasPath"])["type"] == "integer"  # type: ignore[index]
        assert _resolve(root, scale["labelSelectorPath"])["type"] == "string"  # type: ignore[index]


def test_names_categories_and_short_names() -> None:
    short = [s for c in CRDS for s in c["spec"]["names"]["shortNames"]]
    assert len(short) == len(set(short))
    assert not set(short) & BUILTIN_SHORT_NAMES
    assert all(c["spec"]["names"]["categories"] == ["contextlm"] for c in CRDS)
    assert {c["spec"]["group"] for c in CRDS} == {"contextlm.io"}
    scaled = {
        c["spec"]["names"]["kind"]
        for c in CRDS
        if "scale" in c["spec"]["versions"][0]["subresources"]
    }
    assert scaled == {"RetrievalStack", "AlignedModel", "ContextualDeployment"}


def test_written_yaml_round_trips(repo_root: Path) -> None:
    for crd in CRDS:
        text = (
            repo_root / "crds" / f"contextlm.io_{crd['spec']['names']['plural']}.yaml"
        ).read_text()
        assert yaml.safe_load(text) == crd


def test_rewriter_handles_nullable_and_int_or_string() -> None:
    defs = {
        "X": {
            "type": "object",
            "title": "X",
            "properties": {"a": {"type": "integer"}},
            "additionalProperties": False,
        }
    }
    out = structural(
        {
            "type": "object",
            "properties": {
                "x": {"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}], "default": None},
                "q": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^a$"}]},
                "e": {"const": "only"},
                "n": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        defs,
    )
    assert out["properties"]["x"] == {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "nullable": True,
    }
    assert out["properties"]["q"]["x-kubernetes-int-or-string"] is True
    assert out["properties"]["q"]["pattern"] == "^a$"
    assert out["properties"]["e"] == {"enum": ["only"], "type": "string"}
    assert out["properties"]["n"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True}
