"""`contextlm up`: the embedded default. The same custom resources, no cluster.

Reads a file of contextlm resources (one ContextualDeployment with its RetrievalStack,
Corpus and AlignedModel), then does what the operator would do, with local processes
instead of pods: a local artifact directory instead of S3, SQLite instead of
PostgreSQL, the CPU generator instead of Triton. Each step runs the very component a
pod would run (`contextlm sync`, `index`, `retriever`, `generator`, `gateway`) with the
config the operator would render, so what works here works in a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .api import AlignedModel, ContextualDeployment, Corpus, RetrievalStack
from .api.validation import validate_manifest
from .manifests import iter_documents

DEFAULT_DATA = Path("~/.local/share/contextlm").expanduser()


class EmbeddedError(RuntimeError):
    """The resource set cannot run embedded; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def load_system(
    paths: list[str],
) -> tuple[ContextualDeployment, RetrievalStack, Corpus, AlignedModel]:
    objects: dict[tuple[str, str], BaseModel] = {}
    for _, doc in iter_documents(paths):
        if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("contextlm.io/"):
            obj = validate_manifest(doc)
            objects[(doc["kind"], doc["metadata"]["name"])] = obj
    deployments = [o for (k, _), o in objects.items() if k == "ContextualDeployment"]
    if len(deployments) != 1:
        raise EmbeddedError(f"expected one ContextualDeployment, found {len(deployments)}")
    cd = deployments[0]
    assert isinstance(cd, ContextualDeployment)

    def need(kind: str, name: str) -> Any:
        if (kind, name) not in objects:
            raise EmbeddedError(f"{kind} {name} (referenced by the deployment) is not in the file")
        return objects[(kind, name)]

    stack = need("RetrievalStack", cd.spec.retrieval_ref.name)
    corpus = need("Corpus", stack.spec.corpus_ref.name)
    model = need("AlignedModel", cd.spec.model_ref.name)
    if model.spec.serving.engine != "transformers":
        raise EmbeddedError("the embedded default serves engine: transformers only")
    return cd, stack, corpus, model


class Embedded:
    """Runs the components; stops every process it started."""

    def __init__(self, data_dir: Path) -> None:
        from .runtime.store import StoreConfig

        self.data = data_dir
        self.configs = data_dir / "configs"
        self.logs = data_dir / "logs"
        for d in (self.configs, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.store = StoreConfig(kind="local", path=str(data_dir / "store"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def _config(self, name: str, config: BaseModel) -> Path:
        path = self.configs / f"{name}.json"
        path.write_text(config.model_dump_json(indent=2))
        return path

    def job(self, component: str, config: BaseModel) -> dict[str, Any]:
        """Run a component to completion and return its one-line JSON result."""
        path = self._config(component, config)
        result_file = self.logs / f"{component}.result"
        print(f"contextlm up: {component} ...", flush=True)
        with (self.logs / f"{component}.log").open("wb") as log:
            done = subprocess.run(
                [sys.executable, "-m", "contextlm.cli", component, "--config", str(path),
                 "--termination-log", str(result_file)],
                stdout=subprocess.PIPE, stderr=log, env=self.env, check=False,
            )  # fmt: skip
        lines = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("{")]
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        if done.returncode != 0:
            raise EmbeddedError(
                f"{component} failed ({done.returncode}): {result.get('error') or 'see logs'};"
                f" log: {self.logs / (component + '.log')}"
            )
        return result

    def serve(
        self, component: str, config: BaseModel, ready_url: str, timeout: float = 600
    ) -> None:
        path = self._config(component, config)
        log = (self.logs / f"{component}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "contextlm.cli", component, "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )  # fmt: skip
        self.processes.append(proc)
        print(f"contextlm up: starting {component} ...", flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedError(f"{component} exited ({proc.returncode}); log: {log.name}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(ready_url, timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise EmbeddedError(f"{component} not ready after {timeout:.0f}s; log: {log.name}")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    paths: list[str], *, data_dir: Path, port: int, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Bring the system up; yields the gateway's URL; stops everything on exit."""
    from .runtime.config import (
        GatewayConfig,
        GeneratorConfig,
        IndexConfig,
        RetrieverConfig,
        SyncConfig,
    )

    cd, stack, corpus, model = load_system(paths)
    run = Embedded(data_dir)
    ns = "embedded"
    try:
        synced = run.job("sync", SyncConfig(
            namespace=ns, corpus=corpus.metadata.name, spec=corpus.spec, store=run.store,
            tokenizer=corpus.spec.extraction.chunking.tokenizer, work_dir=str(data_dir / "work" / "sync"),
        ))  # fmt: skip
        indexed = run.job("index", IndexConfig(
            namespace=ns, stack=stack.metadata.name, corpus=corpus.metadata.name,
            snapshot_id=synced["snapshotId"], spec=stack.spec, store=run.store,
            work_dir=str(data_dir / "work" / "index"),
        ))  # fmt: skip
        retriever_port, http_port, grpc_port = _free_port(), _free_port(), _free_port()
        run.serve("retriever", RetrieverConfig(
            namespace=ns, stack=stack.metadata.name, index_version=indexed["indexVersion"],
            spec=stack.spec, store=run.store, host="127.0.0.1", port=retriever_port,
            cache_dir=str(data_dir / "cache" / "retriever"),
        ), f"http://127.0.0.1:{retriever_port}/readyz")  # fmt: skip
        serving = model.spec.serving
        run.serve("generator", GeneratorConfig(
            model=model.spec.base.model, revision=model.spec.base.revision, store=run.store,
            cache_dir=str(data_dir / "cache" / "models"), host="127.0.0.1", http_port=http_port,
            grpc_port=grpc_port, max_batch_size=serving.max_batch_size,
            max_input_length=serving.max_input_length, max_output_length=serving.max_output_length,
        ), f"http://127.0.0.1:{http_port}/v2/health/ready")  # fmt: skip
        run.serve("gateway", GatewayConfig(
            namespace=ns, deployment=cd.metadata.name, spec=cd.spec,
            retriever_url=f"http://127.0.0.1:{retriever_port}",
            generator_url=f"http://127.0.0.1:{http_port}", generator_grpc=f"127.0.0.1:{grpc_port}",
            tokenizer=model.spec.base.model, model_revision=model.spec.base.revision,
            store=run.store, cache_dir=str(data_dir / "cache" / "gateway"),
            sqlite_path=str(data_dir / "feedback.db"), host=host, port=port,
            request_timeout_s=600,  # a laptop CPU may take minutes for a long answer
        ), f"http://127.0.0.1:{port}/readyz")  # fmt: skip
        yield f"http://{host}:{port}"
    finally:
        run.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["examples/embedded/"],
                        help="resource files or folders (default: examples/embedded/)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--check", action="store_true",
                        help="ask one question, record a thumbs-up, print both, and exit")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        with running(args.paths, data_dir=args.data_dir, port=args.port, host=args.host) as url:
            print(f"contextlm up: ready at {url}  (logs: {args.data_dir / 'logs'})", flush=True)
            print(
                f"  curl -s {url}/v1/query -H 'content-type: application/json'"
                ' -d \'{"question": "How long do I have to return a device?"}\'',
                flush=True,
            )
            if args.check:
                _check(url)
                return 0
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except EmbeddedError as exc:
        print(f"contextlm up: {exc}", file=sys.stderr)
        return 1
    return 0


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise EmbeddedError(
            f"{url} answered {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None


def _check(url: str) -> None:
    answer = _post(f"{url}/v1/query", {"question": "How long do I have to return a device?"})
    print(json.dumps(answer, indent=2))
    feedback = _post(
        f"{url}/v1/feedback",
        {"query_id": answer["query_id"], "rating": "up", "idempotency_key": answer["query_id"]},
    )
    print(json.dumps(feedback, indent=2))
