"""The state file: how `ask`, `feedback`, `status` and `align` find the system `up` runs.

`<data dir>/state.json` holds what a cluster keeps in the API server: each resource's
status (the API's Status models), plus what only a local run has (the processes, their
ports and logs). Both `up` and `align` write it, so every change is a read-modify-write
under an exclusive lock, and the file is replaced atomically: a reader never sees half
of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from ..api import (
    AlignedModelStatus,
    AlignmentRunSpec,
    AlignmentRunStatus,
    ContextualDeploymentStatus,
    CorpusStatus,
    RetrievalStackStatus,
)
from .system import EmbeddedError

DEFAULT_DATA = Path(os.environ.get("CONTEXTLM_DATA_DIR", "~/.local/share/contextlm")).expanduser()
STATE = "state.json"


class Process(BaseModel):
    pid: int
    url: str
    log: str
    config: str


class Run(BaseModel):
    """One AlignmentRun: its spec and status, as the resource would hold them."""

    name: str
    spec: AlignmentRunSpec
    status: AlignmentRunStatus = Field(default_factory=AlignmentRunStatus)


class State(BaseModel):
    namespace: str = "default"
    data_dir: str = ""
    created: str | None = Field(
        default=None, description="When this system first came up (its resources' creation)."
    )
    files: list[str] = Field(default_factory=list)
    up_pid: int | None = Field(default=None, description="The `contextlm up` serving it.")
    endpoint: str | None = None
    names: dict[str, str] = Field(default_factory=dict, description="Kind -> name.")
    processes: dict[str, Process] = Field(default_factory=dict)
    jobs: dict[str, dict[str, object]] = Field(
        default_factory=dict, description="Component-inputs hash -> the job's result line."
    )
    corpus: CorpusStatus = Field(default_factory=CorpusStatus)
    stack: RetrievalStackStatus = Field(default_factory=RetrievalStackStatus)
    model: AlignedModelStatus = Field(default_factory=AlignedModelStatus)
    deployment: ContextualDeploymentStatus = Field(default_factory=ContextualDeploymentStatus)
    runs: list[Run] = Field(default_factory=list)

    def up_running(self) -> bool:
        return self.up_pid is not None and pid_alive(self.up_pid)

    def run(self, name: str) -> Run | None:
        return next((r for r in self.runs if r.name == name), None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateFile:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STATE
        self.lock_path = data_dir / (STATE + ".lock")

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> State:
        if not self.path.exists():
            return State()
        return State.model_validate_json(self.path.read_text())

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        """Read, let the caller change, write back: one writer at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                yield state
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(state.model_dump_json(indent=2, by_alias=True, exclude_none=True))
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def running_state(data_dir: Path) -> State:
    """The state of the system `contextlm up` serves from `data_dir`, or a clear error."""
    state = StateFile(data_dir).read()
    if not state.endpoint or not state.up_running():
        raise EmbeddedError(
            f"no system is up with data dir {data_dir}: start one with `contextlm up -f <dir>`"
            " (and pass the same --data-dir here)"
        )
    return state
