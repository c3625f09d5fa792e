"""One pod on the e2e executor node: its volumes, init containers (and native sidecars),
containers as local processes, readiness probes, restarts per restartPolicy, its
status as a kubelet writes it, and its deletion."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness.podinputs import ConfigError, PodInputs, expand

if TYPE_CHECKING:
    from harness.kubelet import Kubelet

LOG = logging.getLogger("e2e-kubelet")
HARNESS_DIR = Path(__file__).resolve().parent
RUNTIME = "contextlm-e2e"
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodWorker(threading.Thread):
    """Runs one pod: its volumes, init containers, then containers, and its status."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], *, adopt_terminal: bool = False) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.api = kubelet.api
        self.pod = pod
        self.adopt_terminal = adopt_terminal
        self.dir = kubelet.root / "pods" / meta["uid"]
        self.inputs = PodInputs(api=kubelet.api, pod=pod, pod_dir=self.dir, pvc_root=kubelet.root / "pvc",
                                apiserver=kubelet.args.apiserver)
        self.changed = threading.Condition()
        self.deleting = bool(meta.get("deletionTimestamp"))
        self.no_restart = False
        self.gone = False
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.ready: dict[str, bool] = {}
        self.started_at: str | None = None
        self.status_lock = threading.Lock()

    # -- events from the watch
    def update(self, pod: dict[str, Any]) -> None:
        with self.changed:
            self.pod = pod
            self.inputs.pod = pod
            newly_deleted = bool(pod["metadata"].get("deletionTimestamp")) and not self.deleting
            if newly_deleted:
                self.deleting = True
            self.changed.notify_all()
        if newly_deleted:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            threading.Thread(target=self.kill_all, kwargs={"grace": min(grace, 30)}, daemon=True).start()

    def removed(self) -> None:
        with self.changed:
            self.gone = True
            self.deleting = True
            self.changed.notify_all()
        self.kill_all(grace=0)

    @property
    def label(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    # -- the pod's life
    def run(self) -> None:
        try:
            if self.adopt_terminal:
                self.finish_deletion_if_requested(wait=True)
                return
            if self.pod.get("status", {}).get("containerStatuses") and any(
                "running" in (cs.get("state") or {}) for cs in self.pod["status"]["containerStatuses"]
            ):
                # A pod this node ran before the kubelet restarted: its processes are
                # gone, which a real kubelet reports the same way.
                self.lost()
            else:
                self.live()
        except Exception:
            LOG.exception("pod %s: worker failed", self.label)
            self.write_status(phase="Failed", reason="E2EKubeletError", message="see the e2e kubelet log")
        self.finish_deletion_if_requested(wait=True)

    def lost(self) -> None:
        for container in self.pod["spec"]["containers"]:
            self.statuses[container["name"]] = self.container_status(
                container, state={"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                                 "message": "the e2e kubelet restarted while the container ran",
                                                 "startedAt": None, "finishedAt": now()}})
        self.write_status(phase="Failed", reason="ContainerStatusUnknown")

    def live(self) -> None:
        spec = self.pod["spec"]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.started_at = now()
        for container in spec.get("initContainers", []):
            self.init_statuses[container["name"]] = self.container_status(
                container, state={"waiting": {"reason": "PodInitializing"}})
        for container in spec["containers"]:
            self.statuses[container["name"]] = self.container_status(
                container, state={"waiting": {"reason": "ContainerCreating"}})
        self.write_status(phase="Pending")

        volumes = self.prepare_volumes_until_ready()
        if volumes is None:
            return
        restart = spec.get("restartPolicy", "Always")
        for container in spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                continue  # native sidecars are started with the main containers
            code = self.run_container(container, volumes, restart="Never" if restart == "Never" else "OnFailure",
                                      init=True)
            if code is None:
                return  # deleted
            if code != 0:
                self.write_status(phase="Failed", reason="InitContainerFailed")
                return
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        threads = [
            threading.Thread(target=self.run_container, args=(c, volumes),
                             kwargs={"restart": restart}, daemon=True)
            for c in spec["containers"]
        ]
        sidecar_threads = [
            threading.Thread(target=self.run_container, args=(c, volumes),
                             kwargs={"restart": "Always", "init": True}, daemon=True)
            for c in sidecars
        ]
        for thread in sidecar_threads + threads:
            thread.start()
        for thread in threads:
            thread.join()
        if sidecars:
            self.no_restart = True  # main containers are done: sidecars stop for good
            self.kill_all(grace=5)
            for thread in sidecar_threads:
                thread.join(timeout=10)
        if self.deleting:
            return
        codes = [self.statuses[c["name"]]["state"].get("terminated", {}).get("exitCode", 1) for c in spec["containers"]]
        self.write_status(phase="Succeeded" if all(code == 0 for code in codes) else "Failed")

    # -- volumes
    def prepare_volumes_until_ready(self) -> dict[str, Path] | None:
        while True:
            try:
                return self.inputs.prepare_volumes()
            except ConfigError as exc:
                for container in self.pod["spec"]["containers"]:
                    self.statuses[container["name"]] = self.container_status(
                        container, state={"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}})
                self.write_status(phase="Pending")
            with self.changed:
                self.changed.wait(timeout=2)
                if self.deleting:
                    return None

    def run_container(self, container: dict[str, Any], volumes: dict[str, Path], *,
                      restart: str, init: bool = False) -> int | None:
        """Run one container until it ends for good; return its last exit code
        (None when the pod was deleted)."""
        name = container["name"]
        statuses = self.init_statuses if init else self.statuses
        restarts, backoff = 0, 1.0
        while True:
            try:
                env = self.inputs.container_env(container)
            except ConfigError as exc:
                statuses[name] = self.container_status(
                    container, state={"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}})
                self.write_status(phase="Pending")
                with self.changed:
                    self.changed.wait(timeout=2)
                if self.deleting:
                    return None
                continue
            log_path = self.dir / "logs" / f"{name}.log"
            if log_path.exists():
                log_path.replace(log_path.with_suffix(".log.previous"))
            started = now()
            try:
                proc = self.spawn(container, env, volumes, log_path, attempt=restarts)
            except FileNotFoundError as exc:
                code, message, started = 127, f"failed to start: {exc}", now()
                log_path.write_text(message + "\n")
            else:
                self.procs[name] = proc
                # A record of every running process group, for e2e/cluster/down to end
                # should this kubelet die without killing its pods.
                running = self.kubelet.root / "running" / str(proc.pid)
                running.parent.mkdir(exist_ok=True)
                running.write_text(self.label)
                self.ready[name] = not container.get("readinessProbe")
                statuses[name] = self.container_status(
                    container, state={"running": {"startedAt": started}}, restarts=restarts,
                    last=statuses.get(name, {}).get("lastState"), attempt=restarts)
                self.write_status(phase="Running" if not init else "Pending")
                if container.get("readinessProbe") and not init:
                    threading.Thread(target=self.probe_loop, args=(container, proc, env), daemon=True).start()
                code = proc.wait()
                running.unlink(missing_ok=True)
                self.procs.pop(name, None)
                self.ready[name] = False
                message = self.termination_message(container, log_path, code, attempt=restarts)
            if self.deleting:
                reason = "Error" if code else "Completed"
            else:
                reason = "Completed" if code == 0 else "Error"
            terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now(),
                          "containerID": self.container_id(name, restarts)}
            if code < 0:  # killed by a signal: report it the way a runtime does
                terminated.update(exitCode=128 - code, signal=-code)
            if message:
                terminated["message"] = message
            again = not self.deleting and not self.no_restart and (
                restart == "Always" or (restart == "OnFailure" and code != 0))
            if again:
                statuses[name] = self.container_status(
                    container, state={"waiting": {"reason": "CrashLoopBackOff" if code else "Completed",
                                                  "message": f"back-off {backoff:.0f}s restarting"}},
                    restarts=restarts + 1, last={"terminated": terminated}, attempt=restarts)
                self.write_status(phase="Running" if not init else "Pending")
                with self.changed:
                    self.changed.wait(timeout=backoff)
                if self.deleting:
                    return None
                restarts += 1
                backoff = min(backoff * 2, 10.0)
                continue
            statuses[name] = self.container_status(
                container, state={"terminated": terminated}, restarts=restarts,
                last=statuses.get(name, {}).get("lastState"), attempt=restarts)
            if not init:
                self.write_status(phase="Running")
            return None if self.deleting else int(terminated["exitCode"])

    def spawn(self, container: dict[str, Any], env: dict[str, str], volumes: dict[str, Path],
              log_path: Path, *, attempt: int) -> subprocess.Popen[bytes]:
        name = container["name"]
        command = list(container.get("command") or self.kubelet.args.default_command)
        argv = [expand(a, env) for a in command + list(container.get("args") or [])]
        mounts = []
        for mount in container.get("volumeMounts", []) or []:
            source = volumes.get(mount["name"])
            if source is None:
                raise ConfigError(f"volume {mount['name']} not found")
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append({"source": str(source), "target": mount["mountPath"], "readOnly": bool(mount.get("readOnly"))})
        term_file = self.dir / "termination" / f"{name}-{attempt}"
        term_file.parent.mkdir(exist_ok=True)
        term_file.write_text("")
        term_path = container.get("terminationMessagePath", "/dev/termination-log")
        base_env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
            "HOME": str(self.dir / "home"),
            "HOSTNAME": self.pod["metadata"]["name"],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
        }
        (self.dir / "home").mkdir(exist_ok=True)
        full_env = {**base_env, **env}
        workdir = container.get("workingDir") or str(self.dir)
        if self.kubelet.use_mount_ns:
            mounts.append({"source": str(term_file), "target": term_path, "readOnly": False})
            spec_path = self.dir / f"nsexec-{name}-{attempt}.json"
            spec_path.write_text(json.dumps({
                "mounts": mounts, "argv": argv, "env": full_env, "cwd": workdir,
                "created": str(self.dir / "created-mountpoints"),
            }))
            launcher = ["unshare", "--mount", "--propagation", "private", "--",
                        sys.executable, "-m", "harness.nsexec", str(spec_path)]
            launcher_env = {"PATH": base_env["PATH"], "PYTHONPATH": str(HARNESS_DIR.parent)}
        else:
            # No mount namespace: rewrite mountPath prefixes to the volume directories.
            mapping = sorted(((m["target"], m["source"]) for m in mounts), key=lambda m: -len(m[0]))
            mapping.append((term_path, str(term_file)))
            argv = [self.rewrite(a, mapping) for a in argv]
            full_env = {k: self.rewrite(v, mapping) for k, v in full_env.items()}
            workdir = self.rewrite(workdir, mapping)
            launcher, launcher_env = argv, full_env
            if not shutil.which(argv[0], path=full_env["PATH"]) and not os.path.exists(argv[0]):
                raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH')
        if not self.kubelet.use_mount_ns:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        LOG.info("pod %s container %s: %s", self.label, name, argv)
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(launcher, env=launcher_env, cwd=str(self.dir), stdout=log_file,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    @staticmethod
    def rewrite(value: str, mapping: list[tuple[str, str]]) -> str:
        for target, source in mapping:
            pattern = rf"(^|[=:,\s]){re.escape(target)}(?=$|/|[\s:,])"
            # \g<1> keeps the separator; the source path is escaped for the template.
            value = re.sub(pattern, "\\g<1>" + source.replace("\\", "\\\\"), value)
        return value

    def termination_message(self, container: dict[str, Any], log_path: Path, code: int, *,
                            attempt: int) -> str:
        term_file = self.dir / "termination" / f"{container['name']}-{attempt}"
        text = term_file.read_text(errors="replace").strip() if term_file.exists() else ""
        if text:
            return text[-TERMINATION_MESSAGE_LIMIT:]
        if code != 0 or container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                lines = log_path.read_text(errors="replace").splitlines()[-FALLBACK_LOG_LINES:]
            except FileNotFoundError:
                return ""
            return "\n".join(lines)[-TERMINATION_MESSAGE_LIMIT:]
        return ""

    def probe_loop(self, container: dict[str, Any], proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
        probe = container["readinessProbe"]
        time.sleep(probe.get("initialDelaySeconds", 0))
        period = probe.get("periodSeconds", 10)
        successes, failures = 0, 0
        while proc.poll() is None and not self.deleting:
            ok = self.probe_once(container, probe, env)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            was = self.ready.get(container["name"], False)
            if ok and successes >= probe.get("successThreshold", 1):
                self.ready[container["name"]] = True
            elif not ok and failures >= probe.get("failureThreshold", 3):
                self.ready[container["name"]] = False
            if was != self.ready.get(container["name"]) and proc.poll() is None:
                cs = self.statuses[container["name"]]
                cs["ready"] = self.ready[container["name"]]
                self.write_status(phase="Running")
            time.sleep(min(period, 1) if not self.ready.get(container["name"]) else period)

    @staticmethod
    def probe_once(container: dict[str, Any], probe: dict[str, Any], env: dict[str, str]) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", []) or []}

        def port_of(value: Any) -> int:
            return int(ports.get(value, value))

        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port_of(get['port'])}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return bool(200 <= response.status < 400)
            if "tcpSocket" in probe:
                with socket.create_connection(("127.0.0.1", port_of(probe["tcpSocket"]["port"])), timeout=timeout):
                    return True
            if "exec" in probe:
                env_full = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]), **env}
                return subprocess.run(probe["exec"]["command"], env=env_full, timeout=timeout,
                                      capture_output=True, check=False).returncode == 0
        except Exception:  # noqa: BLE001 - any failure is a failed probe
            return False
        return True

    # -- status
    def container_id(self, name: str, attempt: int) -> str:
        return f"{RUNTIME}://{self.pod['metadata']['uid']}-{name}-{attempt}"

    def container_status(self, container: dict[str, Any], *, state: dict[str, Any], restarts: int = 0,
                         last: dict[str, Any] | None = None, attempt: int = 0) -> dict[str, Any]:
        running = "running" in state
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": f"{RUNTIME}://local/{container.get('image', '')}",
            "ready": running and self.ready.get(container["name"], False),
            "started": running,
            "restartCount": restarts,
            "state": state,
            "lastState": last or {},
        }
        if running or "terminated" in state:
            status["containerID"] = self.container_id(container["name"], attempt)
        return status

    def write_status(self, *, phase: str, reason: str | None = None, message: str | None = None) -> None:
        with self.status_lock:
            if self.gone:
                return
            spec = self.pod["spec"]
            containers = [self.statuses[c["name"]] for c in spec["containers"] if c["name"] in self.statuses]
            inits = [self.init_statuses[c["name"]] for c in spec.get("initContainers", []) or []
                     if c["name"] in self.init_statuses]
            all_ready = phase == "Running" and all(cs["ready"] for cs in containers) and len(containers) == len(spec["containers"])
            initialized = not inits or all(
                "terminated" in cs["state"] and cs["state"]["terminated"].get("exitCode") == 0 or cs.get("started")
                for cs in inits)
            terminal = phase in ("Succeeded", "Failed")
            ts = now()

            def cond(ctype: str, ok: bool, why: str | None = None) -> dict[str, Any]:
                c: dict[str, Any] = {"type": ctype, "status": "True" if ok else "False", "lastProbeTime": None,
                                     "lastTransitionTime": self.transition(ctype, ok, ts)}
                if not ok and why:
                    c["reason"] = why
                return c

            ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
            status: dict[str, Any] = {
                "phase": phase,
                "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.started_at or ts,
                "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
                "conditions": [
                    cond("PodReadyToStartContainers", phase != "Pending" or bool(self.procs) or terminal),
                    cond("Initialized", initialized or terminal, "ContainersNotInitialized"),
                    cond("ContainersReady", all_ready, ready_reason),
                    cond("Ready", all_ready, ready_reason),
                    {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                     "lastTransitionTime": self.transition("PodScheduled", True, ts)},
                ],
                "containerStatuses": containers,
            }
            if inits:
                status["initContainerStatuses"] = inits
            if reason:
                status["reason"] = reason
            if message:
                status["message"] = message
            try:
                self.api.patch_namespaced_pod_status(self.pod["metadata"]["name"], self.pod["metadata"]["namespace"],
                                                     {"status": status})
            except ApiException as exc:
                if exc.status == 404:
                    self.gone = True
                    return
                LOG.warning("pod %s: status update failed: %s %s", self.label, exc.status, exc.body)

    _transitions: dict[str, tuple[bool, str]]

    def transition(self, ctype: str, ok: bool, ts: str) -> str:
        if not hasattr(self, "_transitions"):
            self._transitions = {}
        previous = self._transitions.get(ctype)
        if previous is None or previous[0] != ok:
            self._transitions[ctype] = (ok, ts)
        return self._transitions[ctype][1]

    # -- deletion
    def kill_all(self, *, grace: float) -> None:
        procs = list(self.procs.values())
        for proc in procs:
            with _suppress():
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def finish_deletion_if_requested(self, *, wait: bool) -> None:
        """Once the pod is terminal, wait for its deletion and finalise it (grace 0), as
        a kubelet does; then clean its directory."""
        while wait and not self.deleting and not self.kubelet.stopping.is_set():
            with self.changed:
                self.changed.wait(timeout=5)
        if self.kubelet.stopping.is_set():
            return
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        self.kill_all(grace=min(grace, 30))
        if not self.gone:
            meta = self.pod["metadata"]
            try:
                self.api.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0,
                                               body=client.V1DeleteOptions(preconditions={"uid": meta["uid"]},
                                                                           grace_period_seconds=0))
            except ApiException as exc:
                if exc.status not in (404, 409):
                    LOG.warning("pod %s: final delete failed: %s", self.label, exc.status)
        self.cleanup()

    def cleanup(self) -> None:
        created = self.dir / "created-mountpoints"
        if created.exists():
            for path in reversed(created.read_text().splitlines()):
                with _suppress():
                    if os.path.isdir(path):
                        os.rmdir(path)
                    elif os.path.isfile(path) and os.path.getsize(path) == 0:
                        os.unlink(path)
        if not self.kubelet.args.keep_pod_dirs:
            shutil.rmtree(self.dir, ignore_errors=True)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
