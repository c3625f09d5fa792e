"""Shared fixtures for the unit and integration tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_bad_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(
        (ROOT / "tests/data/bad_resources.yaml").read_text()
    )
    return cases


def load_examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion") == "contextlm.io/v1alpha1":
                out.append(
                    (f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}", doc)
                )
    return out


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
