"""Run a Deployment that the operator rendered as a local process, with its own config.

Deployments land on kwok nodes, which only pretend to run pods, and the harness has no
Service network. A test that needs the service behind one (the gateway that records
feedback, the generator that serves a revision) starts it here: the container's
command and component from the Deployment, the config from the ConfigMap the pod would
mount, and only what cannot hold outside a pod overridden (listen address and ports,
cache directories, in-cluster URLs). Everything else, the store and the revision
included, is exactly what the operator rendered.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cluster import Cluster, HarnessError


@dataclass
class LocalPod:
    component: str
    config: dict[str, Any]
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def rendered(
    cluster: Cluster, namespace: str, deployment: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(component, config, deployment) as the operator rendered them."""
    body = cluster.get("deployment", deployment, "-n", namespace)
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    component = container["args"][0]
    config_map = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
    data = cluster.get("configmap", config_map, "-n", namespace)["data"]["config.json"]
    return component, json.loads(data), body


@contextlib.contextmanager
def run_deployment(
    cluster: Cluster,
    namespace: str,
    deployment: str,
    *,
    work: Path,
    overrides: dict[str, Any],
    env: dict[str, str],
    ready_path: str,
    port: int,
    timeout: float = 300,
) -> Iterator[LocalPod]:
    """Start the Deployment's component locally; wait for `ready_path` on 127.0.0.1:port."""
    component, config, _ = rendered(cluster, namespace, deployment)
    config.update(overrides)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{deployment}.json"
    path.write_text(json.dumps(config))
    log = work / f"{deployment}.log"
    proc_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "contextlm.cli",
                component,
                "--config",
                str(path),
                "--termination-log",
                str(work / f"{deployment}.termination"),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=proc_env,
        )
    pod = LocalPod(component, config, process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise HarnessError(
                    f"{deployment} ({component}) exited {process.returncode}:\n{pod.output()}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}{ready_path}", timeout=5
            ) as answer:
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise HarnessError(f"{deployment} not ready after {timeout}s:\n{pod.output()}")
            time.sleep(0.5)
        yield pod
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
