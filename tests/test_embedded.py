"""The embedded default: `contextlm up` serves examples/embedded/ on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port

from contextlm.embedded import EmbeddedError, load_system


def test_the_embedded_set_is_one_complete_system(repo_root: Path) -> None:
    cd, stack, corpus, model = load_system([str(repo_root / "examples/embedded")])
    assert cd.spec.retrieval_ref.name == stack.metadata.name
    assert stack.spec.corpus_ref.name == corpus.metadata.name
    assert model.spec.serving.engine == "transformers"


def test_a_set_with_a_missing_reference_is_refused(tmp_path: Path, repo_root: Path) -> None:
    text = (repo_root / "examples/embedded/system.yaml").read_text()
    (tmp_path / "s.yaml").write_text(text.replace("name: handbook-retrieval\nspec:", "name: other\nspec:"))
    with pytest.raises(EmbeddedError, match="RetrievalStack handbook-retrieval"):
        load_system([str(tmp_path)])


def test_contextlm_up_answers_with_citations_and_records_feedback(
    tmp_path: Path, repo_root: Path
) -> None:
    """The README's first command, end to end: sync, index, retriever, generator (the
    SmolLM2 a package ships) and gateway as local processes; one question; one thumb."""
    done = subprocess.run(
        [sys.executable, "-m", "contextlm.cli", "up", "--check", "--data-dir", str(tmp_path),
         "--port", str(free_port()), str(repo_root / "examples/embedded")],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    blocks = done.stdout[done.stdout.index("\n{") + 1 :]  # the JSON after the banner
    decoder = json.JSONDecoder()
    answer, end = decoder.raw_decode(blocks)
    feedback, _ = decoder.raw_decode(blocks[end:].lstrip())
    assert answer["query_id"] and answer["recorded"] is True
    assert answer["context"]["chunks"] >= 1
    assert answer["index_version"] and answer["model_revision"] == "base"
    assert feedback["query_id"] == answer["query_id"]
    assert (tmp_path / "feedback.db").exists()
