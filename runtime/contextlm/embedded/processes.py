"""Local processes in place of pods: jobs that run to completion and servers that stay up.

Each runs the very entry point its container would (`python -m contextlm.cli <component>
--config <file>`), with the config the operator would render, its own process group (so
Ctrl-C at the terminal reaches `up` alone, and `up` stops each child in order) and its
log under `<data dir>/logs/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .progress import Bar
from .system import EmbeddedError

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, before anything starts."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EmbeddedError(
                f"port {port} on {host} is already in use ({exc.strerror}): stop what listens"
                f" there (another `contextlm up`?) or pass --port"
            ) from None


class Processes:
    def __init__(self, data_dir: Path, *, quiet: bool = False) -> None:
        self.data = data_dir
        self.configs = data_dir / "configs"
        self.logs = data_dir / "logs"
        for folder in (self.configs, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, **OFFLINE}

    def say(self, text: str) -> None:
        """A milestone, on stderr (stdout is for results, JSON with --output json)."""
        print(f"contextlm: {text}", file=sys.stderr, flush=True)

    def write_config(self, name: str, config: BaseModel) -> Path:
        path = self.configs / f"{name}.json"
        path.write_text(config.model_dump_json(indent=2))
        return path

    def job(
        self, component: str, config: BaseModel, *, name: str | None = None,
        total: int | None = None, extra: list[str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Run a component to completion, following its log; its one-line JSON result."""
        name = name or component
        path = self.write_config(name, config)
        result_file = self.logs / f"{name}.result"
        result_file.unlink(missing_ok=True)
        log_path = self.logs / f"{name}.log"
        bar = Bar(name, total=total)  # a bar only on a terminal; lines otherwise
        self.say(f"{name} (log: {log_path})")
        command = [sys.executable, "-m", "contextlm.cli", component, "--config", str(path),
                   "--termination-log", str(result_file), *(extra or [])]  # fmt: skip
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env,
                text=True, errors="replace", start_new_session=True,
            )  # fmt: skip
            assert proc.stderr is not None
            try:
                for line in proc.stderr:
                    log.write(line)
                    log.flush()
                    bar.line(line)
                code = proc.wait()
            except BaseException:
                _stop(proc)
                raise
            finally:
                bar.close()
        result: dict[str, Any] = {}
        if result_file.exists():
            lines = result_file.read_text().strip().splitlines()
            result = json.loads(lines[-1]) if lines else {}
        if code != 0:
            reason = result.get("reason") or result.get("error") or "see its log"
            raise JobFailed(f"{name} failed (exit {code}): {reason}; log: {log_path}", result)
        return result

    def serve(
        self, name: str, config: BaseModel, ready_url: str, *, component: str | None = None,
        timeout: float = 900,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start a server and wait until `ready_url` answers 200."""
        path = self.write_config(name, config)
        log_path = self.logs / f"{name}.log"
        self.say(f"starting {name} (log: {log_path})")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "contextlm.cli", component or name, "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip
        self.servers[name] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise EmbeddedError(
                    f"{name} exited ({proc.returncode}) while starting; log: {log_path}\n    "
                    + "\n    ".join(tail)
                )
            if _ready(ready_url):
                return proc
            time.sleep(0.5)
        raise EmbeddedError(f"{name} not ready after {timeout:.0f}s; log: {log_path}")

    def stop(self, name: str) -> None:
        proc = self.servers.pop(name, None)
        if proc is not None:
            _stop(proc)

    def stop_all(self) -> None:
        """Stop the servers in the reverse order of their start."""
        for name in reversed(list(self.servers)):
            self.stop(name)

    def exited(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p in self.servers.items() if p.poll() is not None]


class JobFailed(EmbeddedError):
    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
        return bool(answer.status == 200)
    return False


def _stop(proc: subprocess.Popen[Any], grace: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def follow(proc: subprocess.Popen[bytes], on_exit: threading.Event) -> threading.Thread:
    """A thread that sets `on_exit` when `proc` ends."""

    def wait() -> None:
        proc.wait()
        on_exit.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread
