"""Real servers for the integration tier, started by the test run on 127.0.0.1.

MinIO comes from the binary `e2e/cluster/build s3` compiles into ~/.cache/contextlm
(cached by version); PostgreSQL from Debian's package (`e2e/cluster/build apt`). Each
server lives in a temporary directory for one test session and is stopped afterwards.
A missing binary fails the test with the command that builds or installs it: these tests
never skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CONTEXTLM_CACHE", Path.home() / ".cache" / "contextlm"))
CURRENT = CACHE / "bin" / "current"


class ServerMissing(AssertionError):
    """A server binary is not installed; the message says how to get it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come up within {timeout:.0f}s")


def _binary(name: str, build: str) -> Path:
    path = CURRENT / name
    if not path.exists():
        raise ServerMissing(f"{path} is missing: run `{build}`")
    return path.resolve()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The store's credential variables, as the operator sets them in pods."""
        return {
            "CONTEXTLM_S3_ACCESS_KEY": self.access_key,
            "CONTEXTLM_S3_SECRET_KEY": self.secret_key,
        }


@contextlib.contextmanager
def run_minio() -> Iterator[S3Server]:
    binary = _binary("minio", "e2e/cluster/build s3")
    port, console = free_port(), free_port()
    data = Path(tempfile.mkdtemp(prefix="contextlm-minio-"))
    server = S3Server(f"http://127.0.0.1:{port}", "contextlm-test", "contextlm-test-secret")
    env = {
        **os.environ,
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_BROWSER": "off",
    }
    log = (data.parent / f"{data.name}.log").open("wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "server",
            "--quiet",
            "--address",
            f"127.0.0.1:{port}",
            "--console-address",
            f"127.0.0.1:{console}",
            str(data),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(
            lambda: (
                urllib.request.urlopen(f"{server.endpoint}/minio/health/ready", timeout=2).status
                == 200
            ),
            "minio",
        )
        yield server
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    data_dir: Path
    bin_dir: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def stop(self) -> None:
        """Stop the server (fast shutdown), as an outage would."""
        subprocess.run(
            [
                *self._as_owner(),
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        subprocess.run(
            [
                *self._as_owner(),
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}",
            ],
            check=True,
            capture_output=True,
        )


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    bin_dir = _binary("postgresql-bin", "e2e/cluster/build apt")
    # PostgreSQL refuses to run as root; root's home is not readable by its user.
    base = Path(tempfile.mkdtemp(prefix="contextlm-pg-", dir="/var/tmp"))
    server = PostgresServer(
        "127.0.0.1", free_port(), "contextlm", "contextlm-test", "contextlm", base / "data", bin_dir
    )
    pwfile = base / "pw"
    pwfile.write_text(server.password)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(
        [
            *server._as_owner(),
            str(bin_dir / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            server.user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    server.start()
    try:
        env = {**os.environ, "PGPASSWORD": server.password}
        subprocess.run(
            [
                str(bin_dir / "psql"),
                "-h",
                server.host,
                "-p",
                str(server.port),
                "-U",
                server.user,
                "-d",
                "postgres",
                "-c",
                f"CREATE DATABASE {server.database}",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
