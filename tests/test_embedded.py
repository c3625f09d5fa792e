"""The embedded default: `contextlm up` runs examples/quickstart/ on this machine.

The integration test is the README's first command as a user would try it: the real
components as local processes (sync, index, retriever, the SmolLM2 generator a package
ships, gateway), three questions with known answers, feedback, one AlignmentRun, Ctrl-C,
and a second `up` that reuses the snapshot and index.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from servers import free_port

from contextlm.embedded import EmbeddedError, load_system

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
QUESTIONS = {  # question -> the handbook document that answers it
    "How many days of paid vacation does a full-time employee get?": "vacation.md",
    "Within how many days must an expense claim be submitted?": "expenses.md",
    "How many weeks of paid parental leave do parents get?": "parental-leave.md",
}


def contextlm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contextlm.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_the_quickstart_is_one_complete_system() -> None:
    system = load_system([str(QUICKSTART)])
    assert system.deployment.spec.retrieval_ref.name == system.stack.metadata.name
    assert system.stack.spec.corpus_ref.name == system.corpus.metadata.name
    assert system.model.spec.serving.engine == "transformers"
    assert system.corpus.spec.source.config_map is not None
    folder = system.config_map_dir(system.corpus.spec.source.config_map.name, Path("/nowhere"))
    assert {p.name for p in folder.iterdir()} >= set(QUESTIONS.values())
    assert "handbook-eval" in system.config_maps


def test_a_set_with_a_missing_reference_is_refused(tmp_path: Path) -> None:
    text = (QUICKSTART / "system.yaml").read_text()
    (tmp_path / "s.yaml").write_text(
        text.replace("name: handbook-retrieval\nspec:", "name: x\nspec:")
    )
    with pytest.raises(EmbeddedError, match="RetrievalStack handbook-retrieval"):
        load_system([str(tmp_path / "s.yaml")])


def test_a_malformed_file_fails_with_the_file_and_field_before_anything_starts(
    tmp_path: Path,
) -> None:
    text = (QUICKSTART / "system.yaml").read_text().replace("topK: 4", "topK: -3")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    data = tmp_path / "data"
    done = contextlm("up", "-f", str(bad), "--data-dir", str(data), "--port", str(free_port()),
                     timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert str(bad) in done.stderr and "spec.topK" in done.stderr, done.stderr
    assert "RetrievalStack/handbook-retrieval" in done.stderr
    assert not data.exists(), "nothing may start (or be written) for a malformed file"


def test_a_port_in_use_is_reported_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = contextlm("up", "-f", str(QUICKSTART), "--data-dir", str(tmp_path / "d"),
                         "--port", str(port), timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr
    assert not (tmp_path / "d" / "logs").exists()


def test_commands_without_a_running_system_say_how_to_start_one(tmp_path: Path) -> None:
    done = contextlm("ask", "--data-dir", str(tmp_path), "anything?", timeout=60)
    assert done.returncode == 1 and "contextlm up -f" in done.stderr, done.stderr


def test_progress_lines_drive_the_bars() -> None:
    import io

    from contextlm.embedded.progress import Bar

    out = io.StringIO()
    bar = Bar("index", stream=out)
    bar.line("INFO contextlm.index embedded 64/130 chunks")
    bar.line("INFO contextlm.index embedded 130/130 chunks")
    assert (bar.position, out.getvalue().strip()) == (130, "index: 130/130 chunk")
    train = Bar("train", stream=io.StringIO())
    train.line("step 3/4 loss=0.69")
    assert train.position == 3


def _start(
    data: Path, port: int, log: Path, *extra: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`contextlm up` in the background; its ready line (--output json)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "contextlm.cli", "up", "-f", str(QUICKSTART), "--data-dir",
         str(data), "--port", str(port), "--output", "json", *extra],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready, or EOF if up failed
    assert line, f"contextlm up exited {proc.wait()}: {log.read_text()[-3000:]}"
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str], state: Path) -> None:
    pids = [p["pid"] for p in json.loads(state.read_text())["processes"].values()]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_up_ask_feedback_align_and_a_second_up_reuses_the_index(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    # The trigger is checked by hand here (`contextlm align`); the second `up` lets it fire.
    proc, ready = _start(data, port, tmp_path / "up1.log", "--trigger-interval", "0")
    try:
        assert ready["endpoint"] == f"http://127.0.0.1:{port}" and ready["modelRevision"] == "base"
        d = ("--data-dir", str(data), "--output", "json")
        answers = []
        for question, document in QUESTIONS.items():
            answer = _json(contextlm("ask", *d, question))
            cited = [c["doc_id"] for c in answer["citations"]]
            assert cited and cited[0] == document, (question, answer["answer"], cited)
            answers.append(answer)
        _json(contextlm("feedback", *d, answers[0]["query_id"], "down", "--correction",
                        "Full-time employees get 27 days of paid vacation per year [1]."))  # fmt: skip
        for answer in answers[1:]:
            _json(contextlm("feedback", *d, answer["query_id"], "up"))

        # minFeedback is 3 in the quickstart: the trigger fires without --force.
        started = time.monotonic()
        run = _json(contextlm("align", *d, timeout=1500))
        status = run["status"]
        assert status["phase"] in ("Promoted", "Rejected"), status
        gate = status["gate"]
        assert gate["metric"] == "answer-overlap"
        assert 0.0 <= gate["candidateScore"] <= 1.0 and 0.0 <= gate["baselineScore"] <= 1.0
        assert status["dataset"]["desirable"] + status["dataset"]["undesirable"] == 3
        assert status["outputRevision"] and status["steps"] >= 1
        print(f"align took {time.monotonic() - started:.0f}s: {gate}")
        expected = status["outputRevision"] if status["phase"] == "Promoted" else "base"
        if status["phase"] == "Promoted":
            assert run["servingRolledOut"] is True
        again = _json(contextlm("ask", *d, "How long must a password be?"))
        assert again["model_revision"] == expected

        items = {(i["kind"], i["name"]): i for i in _json(contextlm("status", *d))["items"]}
        for kind in ("Corpus", "RetrievalStack", "AlignedModel", "ContextualDeployment"):
            found = next(i for (k, _), i in items.items() if k == kind)
            assert found["status"]["phase"] == "Ready", found
            conditions = {c["type"]: c for c in found["status"]["conditions"]}
            assert conditions["Ready"]["status"] == "True", found
            reason = "SnapshotPublished" if kind == "Corpus" else "Available"
            assert conditions["Ready"]["reason"] == reason, found
        model = next(i for (k, _), i in items.items() if k == "AlignedModel")["status"]
        assert model["servingRevision"] == expected
        assert [r["id"] for r in model["revisions"]] == [status["outputRevision"]]
        assert items[("AlignmentRun", run["name"])]["status"]["phase"] == status["phase"]
        deployment = next(i for (k, _), i in items.items() if k == "ContextualDeployment")
        assert deployment["status"]["feedback"] == {"up": 2, "down": 1, "corrections": 1}

        # No new feedback since the run: the trigger does not fire again.
        idle = _json(contextlm("align", *d))
        assert idle["triggered"] is False and "3 more" in idle["reason"]
    finally:
        if proc.poll() is None:
            _stop(proc, data / "state.json")

    proc, ready = _start(data, free_port(), tmp_path / "up2.log", "--trigger-interval", "2")
    try:
        log = (tmp_path / "up2.log").read_text()
        assert "is up to date" in log and "index: version" in log, log[-2000:]
        assert ready["modelRevision"] == expected
        # Three more ratings: `up` sees the trigger fire and runs the AlignmentRun itself.
        for question in QUESTIONS:
            answer = _json(contextlm("ask", *d, question))
            _json(contextlm("feedback", *d, answer["query_id"], "up"))
        deadline = time.monotonic() + 1200
        while True:
            items = _json(contextlm("status", *d))["items"]
            runs = [i for i in items if i["kind"] == "AlignmentRun" and i["name"] != run["name"]]
            if runs and runs[0]["status"].get("phase") in ("Promoted", "Rejected", "Failed"):
                break
            assert time.monotonic() < deadline and proc.poll() is None, (
                (tmp_path / "up2.log").read_text()[-3000:]
            )
            time.sleep(2)
        second = runs[0]["status"]
        assert second["phase"] in ("Promoted", "Rejected"), second
        assert second["dataset"]["desirable"] == 3 and second["gate"]["metric"] == "answer-overlap"
        assert second["baseRevision"] == expected
        assert "the trigger fired" in (tmp_path / "up2.log").read_text()
    finally:
        _stop(proc, data / "state.json")
