"""Progress of a long job, read from the log lines the component already writes.

The components log for Kubernetes (one line per event on stderr); here those lines are
teed into the job's log file and the ones that say how far a job is drive a tqdm bar
with an ETA: sync's `progress documents=N`, train's `step i/N`, and the index build's
`embedded i/N chunks`. Without a terminal, or with
`--output json`, no bar is drawn: the milestones are printed as plain lines instead.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import IO, Any

SYNC_PROGRESS = re.compile(r"progress documents=(\d+)")
TRAIN_STEP = re.compile(r"step (\d+)/(\d+)")
EMBEDDING = re.compile(r"embedding (\d+) new chunk texts")
EMBEDDED = re.compile(r"embedded (\d+)/(\d+) chunks")
MILESTONES = re.compile(
    r"published (snapshot|index)|unchanged snapshot|already built|reusing \d+ embeddings"
    r"|exported|gate (Promote|Reject)|training|published revision|scoring|ERROR"
)


@dataclass
class Bar:
    """One job's bar; `total` is None until known."""

    label: str
    total: int | None = None
    quiet: bool = False  # --output json: nothing on the terminal but errors
    stream: IO[str] = sys.stderr

    def __post_init__(self) -> None:
        self.tty = self.stream.isatty() and not self.quiet
        self.bar: Any = None
        self.position = 0

    def _ensure(self, total: int | None, unit: str) -> Any:
        if self.bar is None and self.tty:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(
                total=total, desc=self.label, unit=unit, file=self.stream, leave=True,
                dynamic_ncols=True,
            )  # fmt: skip
        elif self.bar is not None and total is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        return self.bar

    def advance_to(self, position: int, *, total: int | None = None, unit: str = "it") -> None:
        total = total if total is not None else self.total
        bar = self._ensure(total, unit)
        if bar is not None:
            bar.update(max(0, position - self.position))
        elif not self.quiet and (total is None or position in (1, total) or position % 10 == 0):
            shown = f"{position}/{total}" if total else str(position)
            print(f"  {self.label}: {shown} {unit}", file=self.stream, flush=True)
        self.position = max(self.position, position)

    def note(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(f"  {self.label}: {text}", file=self.stream)
        else:
            print(f"  {self.label}: {text}", file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """Feed one log line of the component."""
        if m := SYNC_PROGRESS.search(text):
            self.advance_to(int(m.group(1)), unit="doc")
        elif m := TRAIN_STEP.search(text):
            self.advance_to(int(m.group(1)), total=int(m.group(2)), unit="step")
        elif m := EMBEDDED.search(text):
            self.advance_to(int(m.group(1)), total=int(m.group(2)), unit="chunk")
        elif m := EMBEDDING.search(text):
            self.note(f"embedding {m.group(1)} chunks")
        elif MILESTONES.search(text):
            self.note(text.split(" ", 4)[-1].strip())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
