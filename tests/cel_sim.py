"""A small stand-in for what the API server does with a CRD schema: apply defaults and
evaluate the CEL rules (`x-kubernetes-validations`) with cel-python.

It exists so the unit tier can check that every CEL rule compiles and agrees with its
pydantic twin without a control plane; the e2e tier applies the same cases to a real
kube-apiserver, which remains the authority.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent properties with their schema default, recursively.

    Also reads JSON integers in `number` fields as doubles, as the API server's CEL does.
    """
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in value:
            value[key] = apply_defaults(schema["additionalProperties"], value[key])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def failed_rules(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Messages of every CEL rule (transition rules excepted) that is false or errors."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:  # the API server refuses on evaluation errors too
            failures.append(f"{path}: {rule['message']} (error: {exc})")
            continue
        if isinstance(ok, celpy.CELEvalError) or not bool(ok):
            failures.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                failures += failed_rules(sub, value[name], f"{path}.{name}".lstrip("."))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            failures += failed_rules(schema["items"], item, f"{path}[{i}]")
    return failures
