"""The e2e kubelet: a node whose pods really run, as local processes.

kwok only pretends that pods run. The operator's Jobs (sync, index, train, …) must
execute the real runtime code against the real S3 server, so e2e steers them to one
node, ``contextlm-executor``, that this process drives like a kubelet:

* registers the node (labels ``contextlm.io/executor=true``, taint
  ``contextlm.io/executor=true:NoSchedule``), keeps its Ready condition and its Lease
  in ``kube-node-lease`` fresh;
* watches the pods bound to the node and runs each container's command and args
  (``$(VAR)`` expanded) in the local Python environment (``sys.executable``'s bin
  directory first on PATH), with env resolved from values, ConfigMaps, Secrets and the
  downward API, in a per-pod working directory;
* mounts volumes (emptyDir, configMap, secret, downwardAPI, projected, PVC, hostPath)
  at their mountPath inside a private mount namespace (harness.nsexec), so paths in
  the manifest work unchanged; when mount namespaces are unavailable (not root) it
  rewrites mountPath prefixes in args and env values instead;
* writes pod status as a kubelet does: Pending → Running (containerStatuses with
  startedAt, Ready once readiness probes pass) → Succeeded/Failed with exitCode,
  reason and termination message (the terminationMessagePath file, or the last lines
  of output of a failed container), restarting containers per restartPolicy;
* kills a pod's processes when it is deleted, then finalises the deletion;
* serves ``/containerLogs`` over TLS so ``kubectl logs`` works.

It authenticates as ``system:node:<name>`` in ``system:nodes``: the Node authorizer
and NodeRestriction admission hold it to the same limits as a real kubelet.
What it does not do: images (ignored; the command must exist locally), networking
(every pod shares the host's loopback, so two pods cannot listen on one port),
resource limits, liveness/startup probes, ephemeral containers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from harness.podworker import RUNTIME, PodWorker, now

LOG = logging.getLogger("e2e-kubelet")
EXECUTOR_LABEL = "contextlm.io/executor"
KUBELET_VERSION = "v1.35.4-contextlm-e2e"


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ----------------------------------------------------------------------------- kubelet
class Kubelet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node = args.node_name
        self.root = Path(args.root_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        config.load_kube_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
        self.api = client.CoreV1Api()
        self.coord = client.CoordinationV1Api()
        self.pods: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.use_mount_ns = args.mount_namespaces == "on" or (
            args.mount_namespaces == "auto" and self._mount_ns_works()
        )
        LOG.info("mount namespaces: %s", "on" if self.use_mount_ns else "off (rewriting paths)")

    @staticmethod
    def _mount_ns_works() -> bool:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            return False
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs", "none", "/mnt"],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    # ------------------------------------------------------------------ node + lease
    def node_status(self) -> dict[str, Any]:
        ts = now()
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": f"e2e kubelet: {r}",
                 "lastHeartbeatTime": ts, "lastTransitionTime": self.started}
                for t, s, r in conditions
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux",
                "osImage": "contextlm e2e executor (local processes)",
                "kernelVersion": os.uname().release,
                "containerRuntimeVersion": f"{RUNTIME}://local-process",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                "machineID": "contextlm-e2e", "systemUUID": "contextlm-e2e", "bootID": self.boot_id,
            },
        }

    def register(self) -> None:
        self.started = now()
        self.boot_id = f"{os.getpid()}-{int(time.time())}"
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", EXECUTOR_LABEL: "true",
                    "type": "contextlm-executor",
                },
                "annotations": {"contextlm.io/e2e-kubelet": "true"},
            },
            "spec": {"taints": [{"key": EXECUTOR_LABEL, "value": "true", "effect": "NoSchedule"}]},
            "status": self.node_status(),
        }
        try:
            self.api.create_node(body)  # type: ignore[arg-type]  # the client takes dicts too
            LOG.info("registered node %s", self.node)
        except ApiException as exc:
            if exc.status != 409:
                raise
            LOG.info("node %s already registered", self.node)
        self.heartbeat()

    def heartbeat(self) -> None:
        self.api.patch_node_status(self.node, {"status": self.node_status()})
        lease: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", {"spec": lease["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)  # type: ignore[arg-type]

    def heartbeat_loop(self) -> None:
        while not self.stopping.wait(10):
            try:
                self.heartbeat()
            except Exception:
                LOG.exception("heartbeat failed")

    # ------------------------------------------------------------------ pods
    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self.stopping.is_set():
            try:
                listing = self.api.list_pod_for_all_namespaces(field_selector=selector)
                pods = [self.api.api_client.sanitize_for_serialization(p) for p in listing.items]
                for pod in pods:
                    self.on_pod(pod)
                self.forget_missing({p["metadata"]["uid"] for p in pods})
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.api.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,  # type: ignore[union-attr]
                    timeout_seconds=300,
                    _request_timeout=330,
                )
                for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "DELETED":
                        self.on_pod_gone(obj["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self.on_pod(obj)
            except Exception:
                LOG.exception("pod watch failed; relisting")
                time.sleep(1)

    def on_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.pods.get(uid)
            if worker is None:
                if pod["metadata"].get("deletionTimestamp") or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    worker = PodWorker(self, pod, adopt_terminal=True)
                else:
                    worker = PodWorker(self, pod)
                self.pods[uid] = worker
                worker.start()
            else:
                worker.update(pod)

    def on_pod_gone(self, uid: str) -> None:
        with self.lock:
            worker = self.pods.pop(uid, None)
        if worker:
            worker.removed()

    def forget_missing(self, seen: set[str]) -> None:
        with self.lock:
            gone = [uid for uid in self.pods if uid not in seen]
        for uid in gone:
            self.on_pod_gone(uid)

    def find_container_log(self, namespace: str, name: str, container: str, previous: bool) -> Path | None:
        with self.lock:
            workers = list(self.pods.values())
        for worker in workers:
            meta = worker.pod["metadata"]
            if meta["namespace"] == namespace and meta["name"] == name:
                path = worker.dir / "logs" / f"{container}.log"
                if previous:
                    path = path.with_suffix(".log.previous")
                return path if path.exists() else None
        return None

    # ------------------------------------------------------------------ main
    def run(self) -> None:
        self.register()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        if self.args.port:
            threading.Thread(target=serve_logs, args=(self,), name="logs-server", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        self.stopping.wait()
        LOG.info("stopping: killing pod processes")
        with self.lock:
            workers = list(self.pods.values())
        for worker in workers:
            worker.kill_all(grace=2)


# ----------------------------------------------------------------------------- one pod


# ----------------------------------------------------------------------------- logs
def serve_logs(kubelet: Kubelet) -> None:
    """Serve GET /containerLogs/<ns>/<pod>/<container> (what `kubectl logs` asks the
    API server to proxy) over TLS, accepting only clients with a certificate from the
    cluster CA (the API server's kubelet client certificate)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if parts[0] == "healthz":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404)
                return
            query = urllib.parse.parse_qs(url.query)
            path = kubelet.find_container_log(parts[1], parts[2], parts[3], query.get("previous") == ["true"])
            if path is None:
                self.send_error(404, "container log not found")
                return
            data = path.read_bytes()
            if "tailLines" in query:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-int(query["tailLines"][0]):])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(data)
            if query.get("follow") == ["true"]:
                with open(path, "rb") as handle:
                    handle.seek(len(path.read_bytes()))
                    while True:
                        chunk = handle.read()
                        if chunk:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        elif not any(w.procs for w in list(kubelet.pods.values())):
                            return
                        else:
                            time.sleep(0.5)

        def log_message(self, fmt: str, *args: Any) -> None:
            LOG.debug("logs server: " + fmt, *args)

    server = ThreadingHTTPServer(("127.0.0.1", kubelet.args.port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(kubelet.args.tls_cert, kubelet.args.tls_key)
    context.load_verify_locations(kubelet.args.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="contextlm-executor")
    parser.add_argument("--root-dir", required=True, help="per-pod directories, PVC data, logs")
    parser.add_argument("--apiserver", required=True, help="API server URL given to pods as KUBERNETES_SERVICE_*")
    parser.add_argument("--port", type=int, default=0, help="TLS port of the log server (0: none)")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--ca-file")
    parser.add_argument("--default-command", nargs="+", default=["contextlm"],
                        help="entrypoint for containers without command (the image's ENTRYPOINT)")
    parser.add_argument("--mount-namespaces", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--keep-pod-dirs", action="store_true", help="keep pod directories for debugging")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    Kubelet(args).run()


if __name__ == "__main__":
    main()
