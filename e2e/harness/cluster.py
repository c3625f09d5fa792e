"""Test-side handle on the e2e control plane: start/reuse it, kubectl, waits, and the
operator's ServiceAccount kubeconfig rendered from the Helm chart's RBAC."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

E2E_DIR = Path(__file__).resolve().parent.parent
REPO = E2E_DIR.parent
CLUSTER_SCRIPTS = E2E_DIR / "cluster"
CHART = REPO / "charts" / "contextlm"
OPERATOR_NAMESPACE = "contextlm-system"
RELEASE = "contextlm"

# What the e2e configuration gives the operator's Jobs so they run on the executor node.
EXECUTOR_NODE_SELECTOR = {"contextlm.io/executor": "true"}
EXECUTOR_TOLERATIONS = [
    {"key": "contextlm.io/executor", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
]
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

T = TypeVar("T")


class HarnessError(AssertionError):
    """A harness step failed; the message says what ran and what it printed."""


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def wait_for(predicate: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.5,
             message: str | Callable[[], str] = "condition") -> T:
    """Poll until predicate returns a truthy value and return it; fail with message."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise HarnessError(f"timed out after {timeout}s waiting for {text}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


@dataclass
class Cluster:
    env: dict[str, str]
    admin_kubeconfig: Path
    state: Path
    bin_dir: Path
    started_here: bool = False
    operator_kubeconfig: Path | None = None
    operator_service_account: str = ""
    extra_path: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ kubectl
    def tool_env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), *self.extra_path, env.get("PATH", "")])
        env["KUBECONFIG"] = str(kubeconfig or self.admin_kubeconfig)
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin unless kubeconfig says otherwise); on failure with
        check=True raise with the command line and its output."""
        cmd = [str(self.bin_dir / "kubectl"), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                                env=self.tool_env(kubeconfig), check=False)
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")
        return result

    def get(self, *args: str, kubeconfig: Path | None = None) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig).stdout)
        return data

    def exists(self, *args: str) -> bool:
        result = self.kubectl("get", *args, "--ignore-not-found", "-o", "name", check=False)
        return bool(result.stdout.strip())

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str, *args: str,
              kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl apply -f - (server-side, as a user would with a manifest file)."""
        docs = manifest if isinstance(manifest, (list, str)) else [manifest]
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", "--server-side", "--field-manager=e2e-user", "-f", "-", *args,
                            input=text, kubeconfig=kubeconfig, check=check)

    def helm(self, *args: str) -> str:
        cmd = [str(self.bin_dir / "helm"), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.tool_env(), check=False)
        if result.returncode != 0:
            raise HarnessError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def describe(self, *args: str) -> str:
        return self.kubectl("describe", *args, check=False).stdout

    # ------------------------------------------------------------------ operator identity
    def install_operator_rbac(self, chart: Path = CHART, values: Sequence[str] = ()) -> Path:
        """Render the chart's ServiceAccount and RBAC (nothing else), apply them, and
        write a kubeconfig that authenticates as that ServiceAccount with a token from
        the TokenRequest API. The operator in e2e gets exactly the chart's permissions."""
        if not (chart / "Chart.yaml").exists():
            raise HarnessError(f"Helm chart missing at {chart}: the operator's RBAC comes from it")
        rendered = self.helm("template", RELEASE, str(chart), "--namespace", OPERATOR_NAMESPACE,
                             *[a for v in values for a in ("--set", v)])
        docs = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]
        accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
        if len(accounts) != 1:
            raise HarnessError(f"expected one ServiceAccount in the chart, found {accounts}")
        for doc in docs:
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                doc["metadata"].setdefault("namespace", OPERATOR_NAMESPACE)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
        self.apply(docs)
        self.operator_service_account = accounts[0]
        token = self.kubectl("create", "token", accounts[0], "-n", OPERATOR_NAMESPACE,
                             "--duration=24h").stdout.strip()
        path = self.state / "operator.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "contextlm-e2e", "cluster": {
                "server": self.env["CONTEXTLM_E2E_APISERVER"],
                "certificate-authority": self.env["CONTEXTLM_E2E_CA"]}}],
            "users": [{"name": f"system:serviceaccount:{OPERATOR_NAMESPACE}:{accounts[0]}",
                       "user": {"token": token}}],
            "contexts": [{"name": "operator", "context": {
                "cluster": "contextlm-e2e", "user": f"system:serviceaccount:{OPERATOR_NAMESPACE}:{accounts[0]}"}}],
            "current-context": "operator",
        }))
        path.chmod(0o600)
        self.operator_kubeconfig = path
        return path

    def can_i(self, verb: str, resource: str, *args: str, kubeconfig: Path | None = None) -> bool:
        result = self.kubectl("auth", "can-i", verb, resource, *args, kubeconfig=kubeconfig, check=False)
        return result.stdout.strip() == "yes"


# ---------------------------------------------------------------------- start / stop
def _run_script(name: str, env: dict[str, str], timeout: float) -> str:
    script = CLUSTER_SCRIPTS / name
    result = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise HarnessError(
            f"{script} failed ({result.returncode}). It builds what is missing "
            f"(Go toolchain, pip, apt-get as root); run it by hand to see each step.\n"
            f"--- stderr (last 60 lines) ---\n" + "\n".join(result.stderr.splitlines()[-60:]))
    return result.stdout.strip()


def cluster_running(env: dict[str, str] | None = None) -> bool:
    result = subprocess.run([str(CLUSTER_SCRIPTS / "status"), "--quiet"], env=env or dict(os.environ),
                            capture_output=True, check=False)
    return result.returncode == 0


def start_cluster(*, timeout: float = 3600) -> Cluster:
    """Bring the cluster up (building binaries if needed) or reuse the one running."""
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)  # the e2e kubelet runs pods with this Python
    was_running = cluster_running(env)
    env_file = Path(_run_script("up", env, timeout).splitlines()[-1])
    values = read_env_file(env_file)
    return Cluster(env=values, admin_kubeconfig=Path(values["KUBECONFIG"]),
                   state=Path(values["CONTEXTLM_E2E_STATE"]), bin_dir=Path(values["CONTEXTLM_E2E_BIN"]),
                   started_here=not was_running)


def stop_cluster() -> None:
    _run_script("down", dict(os.environ), 120)


# ---------------------------------------------------------------------- the operator
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    health_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            raise HarnessError(f"operator exited with {self.proc.returncode}:\n{self.log()[-5000:]}")

    def stop(self, grace: float = 15) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def operator_command(namespace: str, metrics_port: int) -> list[str]:
    """The contextlm operator as e2e tests and the scale benchmark run it: watching one
    namespace only (others may share the cluster), no peering, metrics on loopback."""
    return [sys.executable, "-m", "contextlm_operator.main", "--namespace", namespace,
            "--standalone", "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]


@contextmanager
def run_operator(cluster: Cluster, *args: str, module: str = "contextlm_operator.main",
                 command: Sequence[str] | None = None, namespaces: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_dir: Path | None = None,
                 ready_timeout: float = 60) -> Iterator[OperatorProcess]:
    """Run the operator as a local process under the chart's ServiceAccount (never as
    admin) and stop it afterwards. Default command: `python -m kopf run -m MODULE
    --liveness URL (--namespace NS … | --all-namespaces) ARGS`; pass command= to run
    something else (it gets KUBECONFIG and CONTEXTLM_E2E_* in its environment)."""
    if cluster.operator_kubeconfig is None:
        cluster.install_operator_rbac()
    assert cluster.operator_kubeconfig is not None
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    if command is None:
        scope = [a for ns in namespaces for a in ("--namespace", ns)] or ["--all-namespaces"]
        command = [sys.executable, "-m", "kopf", "run", "-m", module, "--liveness", health, *scope, *args]
    proc_env = cluster.tool_env(cluster.operator_kubeconfig)
    # In-cluster variables would make the client ignore KUBECONFIG.
    for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        proc_env.pop(key, None)
    proc_env.update({k: v for k, v in cluster.env.items() if k.startswith("CONTEXTLM_E2E_")})
    proc_env["CONTEXTLM_JOB_NODE_SELECTOR"] = json.dumps(EXECUTOR_NODE_SELECTOR)
    proc_env["CONTEXTLM_JOB_TOLERATIONS"] = json.dumps(EXECUTOR_TOLERATIONS)
    proc_env.update(env or {})
    log_path = (log_dir or cluster.state) / f"operator-{port}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(list(command), env=proc_env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(REPO))
    operator = OperatorProcess(proc, log_path, health)
    try:
        if "--liveness" in command:
            wait_for(lambda: _healthy(operator), timeout=ready_timeout,
                     message=lambda: f"operator liveness at {health}; log:\n{operator.log()[-3000:]}")
        yield operator
    finally:
        operator.stop()


def _healthy(operator: OperatorProcess) -> bool:
    operator.assert_alive()
    try:
        with urllib.request.urlopen(operator.health_url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
