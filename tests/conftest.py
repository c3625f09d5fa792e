"""Shared fixtures for the unit and integration tiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import PostgresServer, S3Server, run_minio, run_postgres

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current render functions",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Any:
    """Compare a rendered object with tests/golden/<name>.yaml (rewritten only with
    --update-golden)."""

    def check(name: str, value: Any) -> None:
        path = ROOT / "tests" / "golden" / f"{name}.yaml"
        text = yaml.safe_dump(value, sort_keys=True, width=100)
        if request.config.getoption("--update-golden"):
            path.write_text(text)
        assert path.exists(), f"no golden file {path}; run pytest --update-golden"
        assert yaml.safe_load(path.read_text()) == yaml.safe_load(text), (
            f"{name} differs from {path}; if intended, run pytest --update-golden and review"
        )

    return check


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real MinIO on 127.0.0.1 for this test session."""
    with run_minio() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 for this test session."""
    with run_postgres() as server:
        yield server
