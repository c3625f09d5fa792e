"""Validate manifests against the models, with errors that name the field path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .common import API_VERSION
from .resources import KIND_BY_NAME


@dataclass(frozen=True)
class FieldError:
    """One problem with a manifest, at a dotted field path such as spec.topK."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidResource(ValueError):
    """A manifest the API would refuse; `errors` name every offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _path(loc: tuple[int | str, ...], extra: str = "") -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    if extra:
        parts.append(f".{extra}" if parts else extra)
    return "".join(parts)


def field_errors(error: ValidationError) -> list[FieldError]:
    out = []
    for e in error.errors():
        # pydantic appends the union member or validator kind to the location of
        # errors inside `int | str` fields; those steps are not field names.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _NOT_FIELDS))
        extra = str((e.get("ctx") or {}).get("field", "")) if e["type"] == "contextlm_rule" else ""
        out.append(FieldError(_path(loc, extra), e["msg"]))
    return out


_NOT_FIELDS = {"int", "str", "function-after[_rfc3339(), str]", "constrained-str"}


def validate_manifest(doc: Any) -> BaseModel:
    """Parse one manifest into its kind's model, or raise InvalidResource."""
    if not isinstance(doc, dict):
        raise InvalidResource([FieldError("(document)", "must be a mapping")])
    if doc.get("apiVersion") != API_VERSION:
        raise InvalidResource([FieldError("apiVersion", f"must be {API_VERSION}")])
    kind = KIND_BY_NAME.get(str(doc.get("kind")))
    if kind is None:
        raise InvalidResource(
            [FieldError("kind", f"must be one of {', '.join(sorted(KIND_BY_NAME))}")]
        )
    try:
        return kind.model.model_validate(doc)
    except ValidationError as exc:
        raise InvalidResource(field_errors(exc)) from None
