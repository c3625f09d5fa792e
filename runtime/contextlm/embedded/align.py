"""`contextlm align`: one AlignmentRun of the embedded system, as the operator runs it.

The trigger first (the AlignedModel's `alignment.trigger.minFeedback` new feedback rows
since the last exported window; `--force` skips it), then the run's lifecycle Pending ->
Training (export, train) -> Evaluating -> Promoted | Rejected | Failed, each step the
same component with the config the operator renders (`render/alignment_run.py`), and
the operator's decision: a passed gate adds a promoted revision to the AlignedModel's
history, which `contextlm up` (told by SIGHUP) rolls the generator to. Feedback comes
from the gateway's SQLite store, which in a cluster lives on the gateway's volume; here
the export job reads it directly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import alignment
from ..api import AlignmentRunSpec, AlignmentRunStatus
from ..api.alignment_run import DatasetCounts, FeedbackWindow
from ..api.common import LocalObjectReference
from ..runtime.config import FeedbackSource
from . import status as st
from .processes import JobFailed, Processes
from .state import DEFAULT_DATA, Run, State, StateFile, running_state
from .system import EmbeddedError, System, load_system


def _store(state_dir: Path) -> Any:
    from ..runtime.store import StoreConfig, open_store

    return open_store(StoreConfig(kind="local", path=str(state_dir / "store")))


def last_window_end(data_dir: Path, state: State) -> datetime | None:
    from ..runtime.feedback.export import last_window_end as ended

    return ended(_store(data_dir), state.namespace, state.names.get("AlignedModel", ""))


def feedback_counts(state: State, since: datetime | None = None) -> dict[str, int] | None:
    """{up, down, corrections} in the SQLite store (since a time), None if there is none."""
    data_dir = _data_dir(state)
    path = data_dir / "feedback.db"
    if not path.exists() or "ContextualDeployment" not in state.names:
        return None
    from ..runtime.feedback.store import FeedbackStore, StoreUnavailable, sqlite_dsn

    deployment = f"{state.namespace}/{state.names['ContextualDeployment']}"
    store = FeedbackStore.open(sqlite_dsn(str(path)), deployment=deployment, pool_size=1)
    try:
        counts = store.counts(since=since)
    except StoreUnavailable:
        return None
    finally:
        store.close()
    return {"up": counts.up, "down": counts.down, "corrections": counts.corrections}


def _data_dir(state: State) -> Path:
    # The state file records its data dir implicitly: the processes' logs live there.
    return Path(state.data_dir)


class Aligner:
    def __init__(self, system: System, data_dir: Path, *, quiet: bool) -> None:
        from ..runtime.store import StoreConfig

        self.system = system
        self.data = data_dir
        self.state = StateFile(data_dir)
        self.procs = Processes(data_dir, quiet=quiet)
        self.store = StoreConfig(kind="local", path=str(data_dir / "store"))
        self.ns = system.namespace
        self.model = system.model

    def due(self, state: State) -> tuple[bool, str, str | None]:
        """(the trigger fires, why, window start): the operator's trigger, over the
        SQLite store (minFeedback, or the schedule when any feedback arrived)."""
        ended = last_window_end(self.data, state)
        since = ended.astimezone(UTC).isoformat() if ended else None
        counts = feedback_counts(state, ended) or {"up": 0, "down": 0}
        fresh = counts["up"] + counts["down"]
        with self.state.update() as s:
            s.model.feedback_since_last_run = fresh
        started = [r.status.start_time for r in state.runs if r.status.start_time]
        check = alignment.check_trigger(
            self.model.spec.alignment, fresh=fresh, at=datetime.now(UTC),
            last_start=max(started) if started else state.created,
        )  # fmt: skip
        reason = check.reason if check.due else f"{check.reason}, or pass --force"
        return check.due, reason, since

    def open_run(self, since: str | None, *, max_steps: int | None, promote: bool) -> Run:
        state = self.state.read()
        base = state.model.serving_revision or self.model.spec.base.revision
        name = alignment.run_name(self.model.metadata.name, since)
        taken = {r.name for r in state.runs}
        n = 2
        while name in taken:  # --force over a window already run: a fresh record
            name, n = f"{alignment.run_name(self.model.metadata.name, since)}-{n}", n + 1
        window = FeedbackWindow(since=since, until=alignment.window_until())
        run = Run(name=name, spec=AlignmentRunSpec(
            model_ref=LocalObjectReference(name=self.model.metadata.name),
            feedback_window=window, base_revision=base, max_steps=max_steps, promote=promote,
        ))  # fmt: skip
        run.status = AlignmentRunStatus(phase="Pending", base_revision=base, start_time=st.now())
        with self.state.update() as s:
            s.runs.append(run)
        return run

    def _update(self, name: str, **fields: Any) -> Run:
        with self.state.update() as s:
            run = s.run(name)
            assert run is not None
            for key, value in fields.items():
                setattr(run.status, key, value)
            return run

    def _condition(self, name: str, ok: bool | None, reason: str, message: str, phase: str) -> None:
        with self.state.update() as s:
            run = s.run(name)
            assert run is not None
            st.set_conditions(run.status, [(st.SUCCEEDED, ok, reason, message)])
            run.status.phase = phase  # type: ignore[assignment]  # a run's own lifecycle
        self.procs.say(f"AlignmentRun {name}: {phase} ({reason}) {message}")

    def execute(self, run: Run) -> Run:
        """Export, train, evaluate, decide; the finished run."""
        name = run.name
        try:
            self._condition(name, None, st.Reason.JOB_RUNNING, "export is running", "Training")
            exported = self.procs.job("export", self._config(run, alignment.EXPORT), name=f"{name}-export")
            counts = exported.get("dataset") or {}
            self._update(name, dataset=DatasetCounts.model_validate(counts))
            self._condition(name, None, st.Reason.JOB_RUNNING, "train is running", "Training")
            steps = run.spec.max_steps or self.model.spec.alignment.max_steps
            trained = self.procs.job("train", self._config(run, alignment.TRAIN), name=f"{name}-train", total=steps)
            revision = str(trained["revision"])
            self._update(name, output_revision=revision, train_loss=trained.get("trainLoss"),
                         steps=trained.get("steps"))  # fmt: skip
            with self.state.update() as s:
                s.model.candidate_revision = revision
            self._condition(name, None, st.Reason.JOB_RUNNING, "evaluate is running", "Evaluating")
            gate = self.procs.job("evaluate", self._config(run, alignment.EVALUATE, revision),
                                  name=f"{name}-evaluate")  # fmt: skip
        except JobFailed as exc:
            with self.state.update() as s:
                s.model.candidate_revision = None
            self._update(name, completion_time=st.now())
            self._condition(name, False, st.Reason.JOB_FAILED, str(exc), "Failed")
            return self._read(name)
        return self.decide(name, gate)

    def decide(self, name: str, result: dict[str, Any]) -> Run:
        """The operator's decision (contextlm.alignment.decide): record the revision with
        both scores; promote only a passed gate of a run that may promote."""
        run = self._read(name)
        assert run.status.output_revision is not None
        verdict = alignment.decide(
            result, run=name, run_spec=run.spec, base_revision=run.status.base_revision,
            output_revision=run.status.output_revision, created=st.now(),
        )  # fmt: skip
        self._update(name, gate=verdict.gate, completion_time=st.now())
        with self.state.update() as s:
            s.model.revisions = alignment.with_revision(s.model.revisions, verdict.revision)
            s.model.candidate_revision = None
        self._condition(name, True, verdict.reason, verdict.message, verdict.phase)
        return self._read(name)

    def _read(self, name: str) -> Run:
        run = self.state.read().run(name)
        assert run is not None
        return run

    # Configs: contextlm.alignment.step_config, as the operator renders them, with this
    # machine's paths and the gateway's SQLite store as the feedback source.

    def _config(self, run: Run, step: str, candidate: str | None = None) -> Any:
        dataset = self.model.spec.alignment.evaluation.dataset
        cd = self.system.deployment
        return alignment.step_config(
            step, namespace=self.ns, run=run.name, run_spec=run.spec, model_spec=self.model.spec,
            deployment=cd.spec,
            feedback=FeedbackSource(backend="sqlite", sqlite_path=str(self.data / "feedback.db"),
                                    deployment=f"{self.ns}/{cd.metadata.name}"),
            base_revision=run.status.base_revision or self.model.spec.base.revision,
            candidate=candidate, retriever_url=self.state.read().stack.endpoint,
            store=self.store,
            paths=alignment.Paths(
                work_dir=str(self.data / "work"), cache_dir=str(self.data / "cache" / "models"),
                evaluation_set=str(self.system.config_map_dir(dataset.name, self.data))
                if dataset else None,
            ),
        )  # fmt: skip

    # Rolling out ----------------------------------------------------------------------

    def roll_out(self, revision: str, *, timeout: float = 900) -> bool:
        """Tell `up` to serve `revision` and wait until the gateway reports it."""
        state = self.state.read()
        if not state.up_running() or state.up_pid is None:
            return False
        os.kill(state.up_pid, signal.SIGHUP)
        self.procs.say(f"asked contextlm up (pid {state.up_pid}) to serve revision {revision}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state.read()
            if state.deployment.model_revision == revision and state.deployment.phase == "Ready":
                return True
            if not state.up_running():
                return False
            time.sleep(1)
        return False


@contextlib.contextmanager
def exclusive(data_dir: Path) -> Iterator[None]:
    with (data_dir / "align.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedError("another `contextlm align` is running on this data dir") from None
        yield


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even if the trigger (minFeedback) would not fire yet",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="override the AlignedModel's alignment.maxSteps for this run",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="train and evaluate, never promote (AlignmentRun spec.promote=false)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"the data dir of `contextlm up` (default: {DEFAULT_DATA})",
    )
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.expanduser().resolve()
    quiet = args.output == "json"
    try:
        state = running_state(data_dir)
        system = load_system(state.files)
        aligner = Aligner(system, data_dir, quiet=quiet)
        with exclusive(data_dir):
            fires, why, since = aligner.due(state)
            if not fires and not args.force:
                _print({"triggered": False, "reason": why}, quiet, f"not running: {why}")
                return 0
            aligner.procs.say(f"AlignmentRun: {why}" if fires else "AlignmentRun: --force")
            opened = aligner.open_run(since, max_steps=args.max_steps, promote=not args.dry_run)
            done = aligner.execute(opened)
            rolled = None
            if done.status.phase == "Promoted" and done.status.output_revision:
                rolled = aligner.roll_out(done.status.output_revision)
    except EmbeddedError as exc:
        print(f"contextlm align: {exc}", file=sys.stderr)
        return 1
    body = {
        "triggered": True, "name": done.name, "servingRolledOut": rolled,
        "spec": done.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "status": done.status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }  # fmt: skip
    gate = done.status.gate
    text = f"AlignmentRun {done.name}: {done.status.phase}"
    if gate is not None:
        text += (f" ({gate.metric}: candidate {gate.candidate_score:.4f}, serving"
                 f" {gate.baseline_score:.4f}, needs +{gate.min_improvement})")  # fmt: skip
    if rolled:
        text += f"; now serving revision {done.status.output_revision}"
    _print(body, quiet, text)
    return 0 if done.status.phase in ("Promoted", "Rejected") else 1


def _print(body: dict[str, Any], quiet: bool, text: str) -> None:
    print(json.dumps(body) if quiet else text, flush=True)
