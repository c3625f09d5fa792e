"""`contextlm gateway` as a real child process on 127.0.0.1, and the HTTP helpers its
tests and benchmarks share (JSON, server-sent events)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from servers import free_port

from contextlm.api.contextual_deployment import ContextualDeploymentSpec
from contextlm.runtime.config import GatewayConfig

MINILM = "all-MiniLM-L6-v2"


def deployment_spec(*, backend: str = "postgres", **prompt: Any) -> ContextualDeploymentSpec:
    spec: dict[str, Any] = {
        "retrievalRef": {"name": "search"},
        "modelRef": {"name": "smol"},
        "prompt": prompt,
        "feedback": {"store": {"backend": backend}},
    }
    if backend == "postgres":
        spec["feedback"]["store"]["postgres"] = {"secretRef": {"name": "feedback-db", "key": "dsn"}}
    return ContextualDeploymentSpec.model_validate(spec)


def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, head, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, payload = exc.code, dict(exc.headers), exc.read()
    text = payload.decode()
    try:
        return status, head, json.loads(text)
    except json.JSONDecodeError:
        return status, head, text


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, JSON-decoded except [DONE]."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


class GatewayProcess:
    """`contextlm gateway --config FILE`, with the DSN and API key in its environment as
    the operator sets them from Secrets."""

    def __init__(
        self,
        config: GatewayConfig,
        work: Path,
        *,
        dsn: str | None = None,
        api_key: str | None = None,
    ) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        path = work / "gateway.json"
        path.write_text(config.model_dump_json(by_alias=True))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("CONTEXTLM_API_KEY", None)
        if dsn:
            env[config.feedback_dsn_env] = dsn
        if api_key:
            env[config.api_key_env] = api_key
        self.log_path = work / "gateway.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "contextlm.cli",
                "gateway",
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--termination-log",
                str(work / "termination-log"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def call(
        self, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> tuple[int, dict[str, str], Any]:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return request(method, self.url + path, body, headers=headers, **kwargs)

    def wait(self, path: str = "/healthz", timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}: {self.output()}")
            try:
                if request("GET", self.url + path, timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway {path} not 200 within {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class GeneratorProcess:
    """`contextlm generator` (the CPU engine) serving a small causal LM, HTTP and gRPC."""

    def __init__(self, model: str, work: Path, *, cache_dir: Path, **settings: Any) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port = free_port(), free_port()
        self.http = f"127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        config = {
            "model": model,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "cache_dir": str(cache_dir),
            "device": "cpu",
            **settings,
        }
        path = work / "generator.json"
        path.write_text(json.dumps(config))
        self.log_path = work / "generator.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "contextlm.cli", "generator", "--config", str(path),
                "--termination-log", str(work / "termination-log"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"generator exited {self.process.returncode}: {self.output()}")
            try:
                if request("GET", f"http://{self.http}/v2/health/ready", timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"generator not ready within {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
