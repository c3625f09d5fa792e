"""`contextlm up`: the whole system on this machine, from the resources a cluster takes.

What the operator does with pods, done with local processes: sync the Corpus into a
snapshot, build the RetrievalStack's index version, serve the retriever, the AlignedModel
on the CPU generator and the ContextualDeployment's gateway, each with the config the
operator would render; a local artifact directory stands in for S3 and SQLite for
PostgreSQL. A job is named by the hash of its inputs, as the operator names Jobs: when
a stored result for the same inputs exists and its artifact's manifest is in the store,
the job is not run again. `up` stays in the foreground; Ctrl-C (or SIGTERM) stops every
process; SIGHUP, sent by `contextlm align` after a promotion, rolls the generator (and the
gateway, which reports the revision) to the AlignedModel's newest promoted revision.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import alignment
from ..runtime.artifacts import content_hash, index_prefix, snapshot_prefix, stable_json
from . import status as st
from .processes import JobFailed, Processes, check_port, free_port
from .state import DEFAULT_DATA, Process, State, StateFile
from .system import EmbeddedError, System, load_system

DEFAULT_FILES = "examples/quickstart/"


class Up:
    """The running system: its processes and its state file."""

    def __init__(self, system: System, *, data_dir: Path, host: str, port: int,
                 quiet: bool, volumes: dict[str, Path]) -> None:  # fmt: skip
        from ..runtime.store import StoreConfig

        self.system = system
        self.data = data_dir
        self.host, self.port = host, port
        self.volumes = volumes
        self.procs = Processes(data_dir, quiet=quiet)
        self.state = StateFile(data_dir)
        self.store_config = StoreConfig(kind="local", path=str(data_dir / "store"))
        self.ns = system.namespace
        self.retriever_port = free_port()
        self.reload = threading.Event()
        self.stopping = threading.Event()

    # Jobs ----------------------------------------------------------------------------

    def _reuse(self, key: str, prefix_of: Any) -> dict[str, Any] | None:
        """The stored result of the job with these inputs, if its artifact is still there."""
        from ..runtime.store import open_store

        result = self.state.read().jobs.get(key)
        if result and open_store(self.store_config).manifest(prefix_of(result)) is not None:
            return dict(result)
        return None

    def sync(self) -> dict[str, Any]:
        from ..runtime.config import SyncConfig

        corpus = self.system.corpus
        source_path, documents = self._source()
        inputs = content_hash(stable_json(corpus.spec.model_dump(mode="json")),
                              _tree(source_path) if source_path else "", length=12)  # fmt: skip
        key = f"sync-{inputs}"
        name = corpus.metadata.name

        def prefix(r: dict[str, Any]) -> str:
            return snapshot_prefix(self.ns, name, str(r["snapshotId"]))

        reused = self._reuse(key, prefix)
        if reused:
            self.procs.say(f"sync: snapshot {reused['snapshotId']} is up to date (inputs {inputs})")
            return reused
        with self.state.update() as s:
            st.set_conditions(s.corpus, [
                (st.SYNCED, None, st.Reason.JOB_RUNNING, "the sync Job is running"),
                (st.READY, False, st.Reason.JOB_PENDING, "no snapshot published yet"),
            ], progressing="Syncing")  # fmt: skip
        config = SyncConfig(
            namespace=self.ns, corpus=name, spec=corpus.spec, store=self.store_config,
            tokenizer=corpus.spec.extraction.chunking.tokenizer,
            work_dir=str(self.data / "work" / "sync"), source_path=source_path,
        )  # fmt: skip
        every = str(max(1, (documents or 100) // 100))
        try:
            result = self.procs.job("sync", config, name=f"sync-{name}", total=documents,
                                    extra=["--progress-every", every])  # fmt: skip
        except JobFailed as exc:
            reason = str(exc.result.get("reason") or st.Reason.JOB_FAILED)
            if reason not in (st.Reason.SOURCE_UNAVAILABLE, st.Reason.INVALID_CONFIG):
                reason = st.Reason.JOB_FAILED
            with self.state.update() as s:
                st.set_conditions(s.corpus, [(st.SYNCED, False, reason, str(exc)),
                                             (st.READY, False, reason, str(exc))])  # fmt: skip
            raise
        with self.state.update() as s:
            s.jobs[key] = result
        return result

    def _source(self) -> tuple[str | None, int | None]:
        """(folder the sync reads, number of documents) for the corpus's source."""
        source = self.system.corpus.spec.source
        if source.inline is not None:
            return None, len(source.inline.documents)
        if source.config_map is not None:
            folder = self.system.config_map_dir(source.config_map.name, self.data)
        else:
            assert source.pvc is not None
            folder = self.system.claim_dir(source.pvc.claim_name, source.pvc.path, self.volumes)
        return str(folder), sum(1 for p in folder.rglob("*") if p.is_file())

    def index(self, snapshot_id: str, previous: str | None) -> dict[str, Any]:
        from ..runtime.config import IndexConfig

        stack = self.system.stack
        name = stack.metadata.name
        inputs = content_hash(stable_json(stack.spec.model_dump(mode="json")), snapshot_id,
                              length=12)  # fmt: skip
        key = f"index-{inputs}"

        def prefix(r: dict[str, Any]) -> str:
            return index_prefix(self.ns, name, str(r["indexVersion"]))

        reused = self._reuse(key, prefix)
        if reused:
            self.procs.say(f"index: version {reused['indexVersion']} is up to date")
            return reused
        with self.state.update() as s:
            st.set_conditions(s.stack, [
                (st.DEPENDENCIES_READY, True, st.Reason.DEPENDENCIES_READY, f"snapshot {snapshot_id}"),
                (st.INDEX_BUILT, None, st.Reason.JOB_RUNNING,
                 f"building the index for snapshot {snapshot_id}"),
            ], progressing="Indexing")  # fmt: skip
        config = IndexConfig(
            namespace=self.ns, stack=name, corpus=self.system.corpus.metadata.name,
            snapshot_id=snapshot_id, spec=stack.spec, store=self.store_config,
            previous_version=previous, work_dir=str(self.data / "work" / "index"),
        )  # fmt: skip
        try:
            result = self.procs.job("index", config, name=f"index-{name}")
        except JobFailed as exc:
            with self.state.update() as s:
                st.set_conditions(s.stack, [(st.INDEX_BUILT, False, st.Reason.JOB_FAILED, str(exc)),
                                            (st.READY, False, st.Reason.JOB_FAILED, str(exc))])  # fmt: skip
            raise
        with self.state.update() as s:
            s.jobs[key] = result
        return result

    # Servers -------------------------------------------------------------------------

    def serve_retriever(self, version: str) -> None:
        from ..runtime.config import RetrieverConfig

        stack = self.system.stack
        config = RetrieverConfig(
            namespace=self.ns, stack=stack.metadata.name, index_version=version,
            spec=stack.spec, store=self.store_config, host="127.0.0.1",
            port=self.retriever_port, cache_dir=str(self.data / "cache" / "retriever"),
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.retriever_port}"
        self.procs.serve("retriever", config, f"{url}/readyz")
        self._record("retriever", url)

    def serve_generator(self, revision: str) -> str:
        """Start a generator for `revision` on fresh ports; its HTTP URL."""
        from ..runtime.config import GeneratorConfig

        model = self.system.model
        serving = model.spec.serving
        http_port, grpc_port = free_port(), free_port()
        trained = revision != model.spec.base.revision
        config = GeneratorConfig(
            model=model.spec.base.model, revision=revision, namespace=self.ns,
            aligned_model=model.metadata.name if trained else None, store=self.store_config,
            cache_dir=str(self.data / "cache" / "models"), host="127.0.0.1",
            http_port=http_port, grpc_port=grpc_port, max_batch_size=serving.max_batch_size,
            max_input_length=serving.max_input_length,
            max_output_length=serving.max_output_length,
            dtype=serving.dtype if serving.dtype in ("float32", "bfloat16", "float16") else "auto",
        )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        self.generator_grpc = f"127.0.0.1:{grpc_port}"
        self.procs.serve("generator", config, f"{url}/v2/health/ready")
        self._record("generator", url)
        return url

    def serve_gateway(self, generator_url: str, revision: str, index_version: str) -> None:
        from ..runtime.config import GatewayConfig

        cd, model = self.system.deployment, self.system.model
        config = GatewayConfig(
            namespace=self.ns, deployment=cd.metadata.name, spec=cd.spec,
            retriever_url=f"http://127.0.0.1:{self.retriever_port}",
            generator_url=generator_url, generator_grpc=self.generator_grpc,
            tokenizer=model.spec.base.model, model_revision=revision, store=self.store_config,
            cache_dir=str(self.data / "cache" / "gateway"),
            sqlite_path=str(self.data / "feedback.db"), host=self.host, port=self.port,
            request_timeout_s=600,  # a laptop CPU may take minutes for a long answer
        )  # fmt: skip
        url = f"http://{self.host}:{self.port}"
        self.procs.serve("gateway", config, f"http://127.0.0.1:{self.port}/readyz")
        self._record("gateway", url)
        with self.state.update() as s:
            s.endpoint = url
            s.deployment.endpoint = url
            s.deployment.index_version = index_version
            s.deployment.model_revision = revision
            s.deployment.replicas = 1
            st.set_conditions(s.deployment, [
                (st.DEPENDENCIES_READY, True, st.Reason.DEPENDENCIES_READY,
                 "retrieval and model serve"),
                (st.MIGRATED, True, "EmbeddedStore", "SQLite is migrated by the gateway at start-up"),
                (st.SERVING, True, st.Reason.AVAILABLE,
                 f"1/1 replicas serve index {index_version} with revision {revision}"),
                (st.READY, True, st.Reason.AVAILABLE,
                 f"1/1 replicas serve index {index_version} with revision {revision}"),
            ], progressing="Deploying")  # fmt: skip

    def _record(self, name: str, url: str) -> None:
        proc = self.procs.servers[name]
        with self.state.update() as s:
            s.processes[name] = Process(
                pid=proc.pid, url=url, log=str(self.procs.logs / f"{name}.log"),
                config=str(self.procs.configs / f"{name}.json"),
            )  # fmt: skip

    def model_serving(self, revision: str) -> None:
        with self.state.update() as s:
            s.model.serving_revision = revision
            s.model.endpoint = s.processes["generator"].url
            s.model.replicas = 1
            message = f"1/1 replicas serve revision {revision}"
            st.set_conditions(s.model, [
                (st.ENGINE_READY, True, st.Reason.AVAILABLE, "no engine build needed"),
                (st.SERVING, True, st.Reason.AVAILABLE, message),
                (st.READY, True, st.Reason.AVAILABLE, message),
            ], progressing="Deploying")  # fmt: skip

    # The whole system ----------------------------------------------------------------

    def start(self) -> None:
        system = self.system
        with self.state.update() as s:
            s.namespace = self.ns
            s.created = s.created or st.now()
            s.data_dir = str(self.data)
            s.files = [str(f) for f in system.files]
            s.up_pid = os.getpid()
            s.endpoint = None
            s.processes = {}
            s.names = {
                "Corpus": system.corpus.metadata.name,
                "RetrievalStack": system.stack.metadata.name,
                "AlignedModel": system.model.metadata.name,
                "ContextualDeployment": system.deployment.metadata.name,
            }
        synced = self.sync()
        with self.state.update() as s:
            s.corpus.snapshot_id = synced["snapshotId"]
            s.corpus.documents = synced.get("documents")
            s.corpus.chunks = synced.get("chunks")
            s.corpus.failed_count = synced.get("failed", 0)
            s.corpus.sync_inputs = next((k[5:] for k, v in s.jobs.items() if v == synced), None)
            s.corpus.last_sync_time = s.corpus.last_sync_time or st.now()
            summary = (f"snapshot {synced['snapshotId']}: {synced.get('documents')} documents,"
                       f" {synced.get('chunks')} chunks, {synced.get('failed', 0)} failed")  # fmt: skip
            st.set_conditions(s.corpus, [
                (st.SYNCED, True, st.Reason.SNAPSHOT_PUBLISHED, summary),
                (st.READY, True, st.Reason.SNAPSHOT_PUBLISHED,
                 f"serving snapshot {synced['snapshotId']}"),
            ])  # fmt: skip
            previous = s.stack.built_index_version
        indexed = self.index(synced["snapshotId"], previous)
        version = str(indexed["indexVersion"])
        self.serve_retriever(version)
        with self.state.update() as s:
            s.stack.built_index_version = version
            s.stack.serving_index_version = version
            s.stack.snapshot_id = synced["snapshotId"]
            s.stack.chunks_indexed = indexed.get("chunks")
            s.stack.endpoint = s.processes["retriever"].url
            s.stack.replicas = 1
            st.set_conditions(s.stack, [
                (st.DEPENDENCIES_READY, True, st.Reason.DEPENDENCIES_READY,
                 f"snapshot {synced['snapshotId']}"),
                (st.INDEX_BUILT, True, st.Reason.INDEX_PUBLISHED,
                 f"index {version}: {indexed.get('chunks')} chunks"),
                (st.SERVING, True, st.Reason.AVAILABLE, f"1/1 replicas serve index {version}"),
                (st.READY, True, st.Reason.AVAILABLE, f"1/1 replicas serve index {version}"),
            ])  # fmt: skip
        revision = self.target_revision()
        generator = self.serve_generator(revision)
        self.model_serving(revision)
        self.serve_gateway(generator, revision, version)
        self.index_version = version

    def target_revision(self) -> str:
        """The newest promoted revision in the model's history, else the base revision
        (the operator's rule)."""
        history = self.state.read().model.revisions
        return alignment.serving_revision(history, self.system.model.spec.base.revision)

    def roll(self) -> None:
        """Serve the target revision: a new generator first, then the gateway on it."""
        revision = self.target_revision()
        if revision == self.state.read().model.serving_revision:
            return
        self.procs.say(f"rolling the generator to revision {revision}")
        with self.state.update() as s:
            s.model.candidate_revision = None
            st.set_conditions(s.model, [(st.SERVING, None, st.Reason.ROLLING_OUT,
                                         f"0/1 replicas ready for revision {revision}")])  # fmt: skip
        old = self.procs.servers.pop("generator")
        try:
            generator = self.serve_generator(revision)
        except EmbeddedError:
            self.procs.servers["generator"] = old  # the old revision keeps serving
            raise
        self.procs.stop("gateway")
        from .processes import _stop

        _stop(old)
        self.model_serving(revision)
        self.serve_gateway(generator, revision, self.index_version)
        self.procs.say(f"serving revision {revision}")

    def stop(self) -> None:
        self.procs.stop_all()
        with self.state.update() as s:
            s.up_pid = None
            s.endpoint = None
            s.processes = {}
            for status in (s.stack, s.model, s.deployment):
                st.set_conditions(status, [
                    (st.SERVING, False, st.Reason.PODS_NOT_READY, "contextlm up is not running"),
                    (st.READY, False, st.Reason.PODS_NOT_READY, "contextlm up is not running"),
                ])  # fmt: skip
                status.replicas = 0


def _tree(folder: str) -> str:
    """What a change in the source folder would change: names, sizes and mtimes."""
    root = Path(folder)
    return stable_json(sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*") if p.is_file()
    ))  # fmt: skip


class Trigger:
    """The AlignedModel's trigger, evaluated the way the operator evaluates it on each
    reconcile: when it fires (minFeedback, or the schedule), `contextlm align` runs in
    the background (log: logs/align.log) and, on a promotion, tells `up` to roll."""

    def __init__(self, up: Up, interval: float) -> None:
        self.up = up
        self.interval = interval
        self.child: subprocess.Popen[bytes] | None = None
        self.next = time.monotonic() + interval

    def tick(self) -> None:
        if self.interval <= 0 or time.monotonic() < self.next:
            return
        self.next = time.monotonic() + self.interval
        if self.child is not None and self.child.poll() is None:
            return  # one run at a time
        from .align import Aligner

        try:
            due, why, _ = Aligner(self.up.system, self.up.data, quiet=True).due(
                self.up.state.read()
            )
        except Exception as exc:  # noqa: BLE001 - a failed check waits for the next one
            self.up.procs.say(f"trigger check failed ({exc}); retrying in {self.interval:.0f}s")
            return
        if not due:
            return
        log = self.up.procs.logs / "align.log"
        self.up.procs.say(f"the trigger fired ({why}): contextlm align; log: {log}")
        with log.open("ab") as sink:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "contextlm.cli", "align", "--data-dir", str(self.up.data)],
                stdout=sink, stderr=subprocess.STDOUT, env=self.up.procs.env,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)
            try:
                self.child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="resource files or folders (same as -f)")
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        dest="files",
        help=f"resource file or folder, as kubectl -f (default: {DEFAULT_FILES})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"artifacts, feedback, logs and state (default: {DEFAULT_DATA})",
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway address")
    parser.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="CLAIM=DIR",
        help="local folder standing for a PersistentVolumeClaim",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="bring it up, ask one question, print the answer and exit",
    )
    parser.add_argument("--output", choices=("text", "json"), default="text",
                        help="json: one JSON line on stdout once ready, no progress bars")  # fmt: skip
    parser.add_argument(
        "--trigger-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often the alignment trigger is checked; when it fires, `contextlm align`"
        " runs in the background (0: only by hand; default: 60)",
    )


def _volumes(specs: list[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        claim, sep, folder = spec.partition("=")
        if not sep or not claim or not folder:
            raise EmbeddedError(f"--volume {spec}: expected CLAIM=DIR")
        out[claim] = Path(folder).expanduser()
    return out


def run(args: argparse.Namespace) -> int:
    files = [*args.paths, *args.files] or [DEFAULT_FILES]
    data_dir: Path = args.data_dir.expanduser().resolve()
    quiet = args.output == "json"
    try:
        system = load_system(files)
        check_port(args.host, args.port)
        state = StateFile(data_dir).read()
        if state.up_running() and state.up_pid != os.getpid():
            raise EmbeddedError(
                f"contextlm up (pid {state.up_pid}) already serves {data_dir}: stop it first,"
                " or pass another --data-dir"
            )
        up = Up(system, data_dir=data_dir, host=args.host, port=args.port, quiet=quiet,
                volumes=_volumes(args.volume))  # fmt: skip
    except EmbeddedError as exc:
        print(f"contextlm up: {exc}", file=sys.stderr)
        return 1
    return _serve(up, args, quiet=quiet)


def _serve(up: Up, args: argparse.Namespace, *, quiet: bool) -> int:
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            up.reload.set()
        else:
            interrupted.set()
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    trigger = Trigger(up, args.trigger_interval)
    try:
        up.start()
        state = up.state.read()
        _announce(state, up, quiet=quiet)
        if args.check:
            from .client import ask, print_answer

            print_answer(ask(state, "How many days of paid vacation does a full-time employee get?"),
                         output=args.output)  # fmt: skip
            return 0
        while not interrupted.is_set():
            if up.reload.wait(timeout=1.0):
                up.reload.clear()
                up.roll()
            trigger.tick()
            dead = up.procs.exited()
            if dead:
                name, code = dead[0]
                raise EmbeddedError(f"{name} exited ({code}); log: {up.procs.logs / name}.log")
    except KeyboardInterrupt:
        up.procs.say("stopping")
    except EmbeddedError as exc:
        print(f"contextlm up: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        trigger.stop()
        up.stop()
    return 0


def _announce(state: State, up: Up, *, quiet: bool) -> None:
    if quiet:
        print(json.dumps({
            "endpoint": state.endpoint, "indexVersion": state.stack.serving_index_version,
            "modelRevision": state.model.serving_revision, "dataDir": str(up.data),
            "pid": os.getpid(),
        }), flush=True)  # fmt: skip
        return
    print(
        f"contextlm: ready at {state.endpoint}  (index {state.stack.serving_index_version},"
        f" revision {state.model.serving_revision}; logs: {up.procs.logs})\n"
        f'  contextlm ask "How many days of paid vacation does a full-time employee get?"\n'
        f"  Ctrl-C stops everything",
        flush=True,
    )
