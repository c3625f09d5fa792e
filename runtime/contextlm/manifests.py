"""Load YAML manifests from files and folders and validate the contextlm ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .api import API_VERSION, FieldError, InvalidResource, validate_manifest


def iter_documents(paths: list[str]) -> Iterator[tuple[str, Any]]:
    for raw in paths:
        path = Path(raw)
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            for index, doc in enumerate(yaml.safe_load_all(file.read_text())):
                if doc is not None:
                    yield f"{file}#{index}", doc


def validate_paths(paths: list[str]) -> Iterator[tuple[str, str | list[FieldError]]]:
    """Each contextlm document with `Kind/name` when valid or its field errors."""
    for source, doc in iter_documents(paths):
        if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION:
            continue  # Secrets, ConfigMaps and other kinds ride along in examples.
        try:
            validate_manifest(doc)
        except InvalidResource as exc:
            yield source, exc.errors
        else:
            yield source, f"{doc['kind']}/{doc['metadata']['name']}"
