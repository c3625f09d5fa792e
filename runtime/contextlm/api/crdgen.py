"""Generate apiextensions.k8s.io/v1 CRDs from the pydantic models.

pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema. The
rewriter below inlines `$ref`s, turns `anyOf: [X, null]` into `nullable: true`, turns
`anyOf: [integer, string]` into `x-kubernetes-int-or-string`, converts numeric
`exclusiveMinimum`, and drops what the API server refuses or ignores (`title`,
`additionalProperties: false`, `uniqueItems`, `propertyNames`). It is written by hand
because no maintained Python library does this (kube-rs does the same in Rust with
`StructuralSchemaRewriter`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, to_jsonable_python

from .common import DNS_LABEL, GROUP, MAX_NAME_LENGTH, VERSION
from .resources import KINDS, Kind

Schema = dict[str, Any]
_DROP = {"title", "uniqueItems", "propertyNames", "examples", "$defs", "discriminator"}


class SchemaError(ValueError):
    """The model produced a schema that cannot become a structural CRD schema."""


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON schema node (recursively) into a structural one."""
    node = _inline(schema, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    return out


def _inline(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Resolve $ref / allOf / anyOf so the node is one concrete type."""
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_inline(target, defs), **node}
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"allOf with {len(parts)} members cannot be made structural")
        node = {**_inline(parts[0], defs), **node}
    if "anyOf" in node:
        node = _collapse_any_of(node, defs)
    return node


def _collapse_any_of(node: Schema, defs: dict[str, Schema]) -> Schema:
    options = [_inline(o, defs) for o in node.pop("anyOf")]
    concrete = [o for o in options if o.get("type") != "null"]
    if len(concrete) < len(options):
        node["nullable"] = True
    if len(concrete) == 1:
        return {**concrete[0], **node}
    if sorted(o.get("type", "") for o in concrete) == ["integer", "string"]:
        string = next(o for o in concrete if o.get("type") == "string")
        keep: Schema = {k: string[k] for k in ("pattern", "maxLength") if k in string}
        return {
            **node,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            **keep,
        }
    raise SchemaError(f"anyOf over {[o.get('type') for o in concrete]} is not structural")


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        return "string"
    if kinds <= {int}:
        return "integer"
    if kinds <= {bool}:
        return "boolean"
    return "number"


class _CrdJsonSchema(GenerateJsonSchema):
    """pydantic's generator, plus schema defaults for `default_factory` fields.

    An omitted sub-object whose fields all have defaults gets its full default from the
    API server; without it the sub-object stays absent and CEL rules that read it fail.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().default_schema(schema)
        value = factory()  # type: ignore[call-arg]
        json_schema = self.generate_inner(schema["schema"])
        if isinstance(value, BaseModel):
            # The whole default, not `{}`: the API server checks CEL rules against the
            # default value as written, before nested defaults would fill it in.
            json_schema["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        else:
            json_schema["default"] = to_jsonable_python(value)
        return json_schema


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_CrdJsonSchema)
    return structural(raw, raw.get("$defs", {}))


def crd_for(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_model = kind.model.model_fields["spec"].annotation
    status_field = kind.model.model_fields["status"].annotation
    status_model = next(a for a in getattr(status_field, "__args__", ()) if a is not type(None))
    spec = model_schema(spec_model)  # type: ignore[arg-type]
    status = model_schema(status_model)
    root: Schema = {
        "type": "object",
        "description": (kind.model.__doc__ or "").strip(),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "The API version: contextlm.io/v1alpha1.",
            },
            "kind": {"type": "string", "description": f"Always {kind.name}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters:"
                " children are named <name>-<component>",
            },
            {
                "rule": f"self.metadata.name.matches('{DNS_LABEL}')",
                "message": "metadata.name must be a DNS label (lowercase letters, digits, '-'),"
                " because Services are named after it",
            },
        ],
    }
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": kind.scale.spec_replicas,
            "statusReplicasPath": kind.scale.status_replicas,
            "labelSelectorPath": kind.scale.label_selector,
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "contextlm",
                "app.kubernetes.io/part-of": "contextlm",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.name,
                "listKind": f"{kind.name}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": [c.to_crd() for c in kind.columns],
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd_for(k) for k in KINDS]


def crd_filename(crd: dict[str, Any]) -> str:
    return f"{GROUP}_{crd['spec']['names']['plural']}.yaml"
