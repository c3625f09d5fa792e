"""Operator at scale on the e2e control plane, beside a minimal kopf operator (the floor).

For each N in --sizes, and for each of the two operators in turn, in a fresh namespace:
apply N complete resource sets (three Secrets, Corpus, RetrievalStack, AlignedModel,
ContextualDeployment) with `kubectl apply --server-side`, then report

- time from a set's first object appearing until every expected child exists and
  every object's status is written (status.observedGeneration == metadata.generation
  with conditions); for the floor, until each object's one ConfigMap exists. p50/p99
  over sets. Times come from watch events seen by this script (one clock for both ends);
- API requests per minute once idle: over a quiet window after convergence (no watch
  event in the namespace for --settle seconds), the requests the operator's own
  identity made, per verb. The API server's `apiserver_request_total` has no label for
  the client, and the cluster is shared with other sessions' tests, so each operator
  runs as its own ServiceAccount (the chart's RBAC rendered under release
  `contextlm-bench`) and a FlowSchema per verb classifies that account's requests:
  `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` on the API
  server's /metrics then counts exactly its requests. The whole server's
  `apiserver_request_total` over the same window is printed too, for context;
- the operator's peak RSS (VmHWM) and CPU seconds.

The contextlm operator runs with its default reconcile timer (30 s). Pods are kept off
the executor node (whose pods are real processes): a kwok node of the benchmark's own,
tainted so nothing else lands on it, takes the Job and Deployment pods, and kwok fakes
them (Deployment pods turn Ready; Job pods complete, with no termination message).

Needs the e2e control plane up (`e2e/cluster/up`); everything this script creates (the
node, ServiceAccount, RBAC, FlowSchemas, namespaces) is deleted at the end.

    python bench/operator_scale.py --sizes 50,200,500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))

from harness.cluster import (
    CHART,
    RBAC_KINDS,
    Cluster,
    OperatorProcess,
    free_port,
    run_operator,
    start_cluster,
    wait_for,
)
from harness.cluster import (
    operator_command as cluster_operator_command,
)

API = "contextlm.io/v1alpha1"
KINDS = {  # kind -> plural
    "Corpus": "corpora",
    "RetrievalStack": "retrievalstacks",
    "AlignedModel": "alignedmodels",
    "ContextualDeployment": "contextualdeployments",
}
CHILD_KINDS = {  # kind -> (path prefix, plural)
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "CronJob": ("/apis/batch/v1", "cronjobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
}
# What the contextlm operator creates for each kind on this harness. A Job pod on a kwok
# node completes without a termination message, so the sync Job "succeeds without a
# result": the Corpus reports Synced=False (JobFailed) and publishes no snapshot, hence
# the RetrievalStack reports DependenciesReady=False (CorpusNotReady) and builds no index
# and no retriever, and the ContextualDeployment waits for it (no gateway). Their status
# is still written, and that is what is timed for them. The script prints the children
# it found per kind at the end of each run, to check this table against the cluster.
CONTEXTLM_CHILDREN = {
    "Corpus": {"ConfigMap", "Job", "CronJob"},  # sync config, sync Job, refresh CronJob
    "AlignedModel": {"ConfigMap", "Deployment", "Service"},  # generator
    "RetrievalStack": set(),
    "ContextualDeployment": set(),
}
FLOOR_CHILDREN = {kind: {"ConfigMap"} for kind in KINDS}

RELEASE = "contextlm-bench"  # chart fullname == ServiceAccount name
SA_NAMESPACE = "contextlm-system"
BENCH_LABEL = {"contextlm.io/bench": "operator-scale"}
NODE = "kwok-bench-scale-0"
TOLERATIONS = [
    {
        "key": "contextlm.io/bench",
        "operator": "Equal",
        "value": "operator-scale",
        "effect": "NoSchedule",
    }
]
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
FLOW_PREFIX = "contextlm-bench-"
SERVICE_CIDR = "10.96.0.0/20"


# ---------------------------------------------------------------------- resource sets
def resource_set(
    i: int, namespace: str, s3_endpoint: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Secrets, [Corpus, RetrievalStack, AlignedModel, ContextualDeployment]) of set i,
    shaped like examples/production, with every pod steered to the benchmark's node."""
    p = f"s{i:04d}"
    placement = {"nodeSelector": dict(BENCH_LABEL), "tolerations": TOLERATIONS}
    small = {"requests": {"cpu": "10m", "memory": "64Mi"}}

    def meta(name: str) -> dict[str, Any]:
        return {"name": f"{p}-{name}", "namespace": namespace, "labels": dict(BENCH_LABEL)}

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(name),
            "type": "Opaque",
            "stringData": data,
        }

    secrets = [
        secret("docs-s3", {"accessKey": "bench", "secretKey": "bench-secret"}),
        secret("feedback-postgres", {"dsn": "postgresql://bench:bench@127.0.0.1:1/feedback"}),
        secret("gateway-key", {"apiKey": f"key-{p}"}),
    ]
    corpus = {
        "apiVersion": API,
        "kind": "Corpus",
        "metadata": meta("docs"),
        "spec": {
            "source": {
                "s3": {
                    "endpoint": s3_endpoint,
                    "bucket": "bench-docs",
                    "prefix": f"{p}/",
                    "secretRef": {"name": f"{p}-docs-s3"},
                }
            },
            "extraction": {"chunking": {"size": 256, "overlap": 32}},
            "refresh": {"schedule": "0 3 1 1 *"},
        },
    }
    stack = {
        "apiVersion": API,
        "kind": "RetrievalStack",
        "metadata": meta("search"),
        "spec": {
            "corpusRef": {"name": f"{p}-docs"},
            "retrievers": [
                {"name": "dense", "weight": 0.5, "dense": {"index": {"type": "flat"}}},
                {"name": "bm25", "weight": 0.5, "sparse": {}},
            ],
            "topK": 5,
            "serving": {"replicas": 1, "resources": small, **placement},
            "indexBuild": {"resources": small, **placement},
        },
    }
    model = {
        "apiVersion": API,
        "kind": "AlignedModel",
        "metadata": meta("llm"),
        "spec": {
            "base": {"model": "models/smollm2-135m-instruct", "revision": "base"},
            "serving": {
                "engine": "transformers",
                "replicas": 1,
                "maxInputLength": 2048,
                "maxOutputLength": 256,
                "resources": small,
                **placement,
            },
        },
    }
    deployment = {
        "apiVersion": API,
        "kind": "ContextualDeployment",
        "metadata": meta("assistant"),
        "spec": {
            "retrievalRef": {"name": f"{p}-search"},
            "modelRef": {"name": f"{p}-llm"},
            "prompt": {"maxContextTokens": 1024, "maxTokens": 256},
            "gateway": {
                "replicas": 1,
                "resources": small,
                "auth": {"secretRef": {"name": f"{p}-gateway-key", "key": "apiKey"}},
                **placement,
            },
            "feedback": {
                "store": {
                    "backend": "postgres",
                    "postgres": {"secretRef": {"name": f"{p}-feedback-postgres", "key": "dsn"}},
                }
            },
        },
    }
    return secrets, [corpus, stack, model, deployment]


def set_index(name: str) -> int | None:
    match = re.match(r"s(\d{4})-", name)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------- watching
@dataclass
class Observed:
    """First-seen times (time.monotonic) from watch events, per object."""

    required_children: dict[str, set[str]]
    need_status: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    owners: dict[str, tuple[int, str]] = field(default_factory=dict)  # uid -> (set, kind)
    added: dict[tuple[int, str], float] = field(default_factory=dict)
    status: dict[tuple[int, str], float] = field(default_factory=dict)
    children: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    last_event: float = field(default_factory=time.monotonic)
    errors: list[str] = field(default_factory=list)

    def owner_event(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        index = set_index(meta["name"])
        if index is None:
            return
        key = (index, kind)
        status = obj.get("status") or {}
        written = status.get("observedGeneration") == meta.get("generation") and bool(
            status.get("conditions")
        )
        with self.lock:
            self.last_event = now
            self.owners[meta["uid"]] = key
            self.added.setdefault(key, now)
            if written:
                self.status.setdefault(key, now)

    def child_event(self, kind: str, obj: dict[str, Any], now: float) -> None:
        with self.lock:
            self.last_event = now
            for ref in obj["metadata"].get("ownerReferences", []):
                if ref.get("kind") in KINDS:
                    self.children[ref["uid"]].setdefault(kind, now)

    def set_times(self, n: int) -> dict[int, float]:
        """Seconds from first appearance to done, for every finished set."""
        done: dict[int, float] = {}
        with self.lock:
            by_key = {key: uid for uid, key in self.owners.items()}
            for index in range(n):
                ends: list[float] = []
                for kind, wanted in self.required_children.items():
                    uid = by_key.get((index, kind))
                    if uid is None:
                        break
                    seen = self.children.get(uid, {})
                    if not wanted <= seen.keys():
                        break
                    ends += [seen[k] for k in wanted]
                    if self.need_status:
                        if (index, kind) not in self.status:
                            break
                        ends.append(self.status[(index, kind)])
                    ends.append(self.added[(index, kind)])
                else:
                    start = min(self.added[(index, k)] for k in self.required_children)
                    done[index] = max(ends) - start
        return done


def _watch(
    api: k8s.ApiClient, path: str, handle: Any, stop: threading.Event, observed: Observed
) -> None:
    """Raw watch of one collection (dicts, no model classes), resumed from the last
    resourceVersion whenever the server ends it."""
    resource_version = "0"  # the initial list as ADDED events, then changes
    watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]

    def lister(**kwargs: Any) -> Any:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", "240"),
            ("resourceVersion", kwargs["resource_version"]),
        ]
        request = api.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return api.call_api(*request).response  # urllib3's, not read yet: streamed

    lister.__doc__ = ":return: object"
    while not stop.is_set():
        try:
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                lister, resource_version=resource_version, deserialize=False, timeout_seconds=240
            ):
                obj = event["object"]  # deserialize=False: the parsed JSON event
                if stop.is_set():
                    return
                resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                if event["type"] in ("ADDED", "MODIFIED"):
                    handle(obj, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - a dropped watch is resumed
            if stop.is_set():
                return
            observed.errors.append(f"{path}: {exc}")
            if "410" in str(exc) or "Expired" in str(exc):
                resource_version = "0"
            time.sleep(1)


@contextmanager
def watching(namespace: str, observed: Observed, admin: k8s.ApiClient) -> Iterator[None]:
    stop = threading.Event()
    threads = []
    for kind, plural in KINDS.items():
        path = f"/apis/{API}/namespaces/{namespace}/{plural}"
        threads.append((path, lambda o, t, k=kind: observed.owner_event(k, o, t)))
    for kind, (prefix, plural) in CHILD_KINDS.items():
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        threads.append((path, lambda o, t, k=kind: observed.child_event(k, o, t)))
    started = [
        threading.Thread(
            target=_watch,
            args=(admin, path, handle, stop, observed),
            daemon=True,
            name=f"watch {path}",
        )
        for path, handle in threads
    ]
    for thread in started:
        thread.start()
    try:
        yield
    finally:
        stop.set()


# ---------------------------------------------------------------------- API server metrics
def scrape(cluster: Cluster) -> tuple[Counter[str], Counter[str]]:
    """(requests of the benchmark's ServiceAccount by verb, all requests by verb)."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    mine: Counter[str] = Counter()
    everyone: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "apiserver_flowcontrol_dispatched_requests_total":
                schema = sample.labels.get("flow_schema", "")
                if schema.startswith(FLOW_PREFIX):
                    mine[schema[len(FLOW_PREFIX) :]] += int(sample.value)
            elif sample.name == "apiserver_request_total":
                everyone[sample.labels.get("verb", "").lower()] += int(sample.value)
    return mine, everyone


def flow_schemas() -> list[dict[str, Any]]:
    subject = {
        "kind": "ServiceAccount",
        "serviceAccount": {"name": RELEASE, "namespace": SA_NAMESPACE},
    }
    schemas = [
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": f"{FLOW_PREFIX}{verb}", "labels": dict(BENCH_LABEL)},
            "spec": {
                # Same priority level as the built-in `service-accounts` schema (9000) gives
                # this account anyway; only the classification changes.
                "priorityLevelConfiguration": {"name": "workload-low"},
                "matchingPrecedence": 5000,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [subject],
                        "resourceRules": [
                            {
                                "verbs": [verb],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "namespaces": ["*"],
                                "clusterScope": True,
                            }
                        ],
                    }
                ],
            },
        }
        for verb in VERBS
    ]
    schemas.append(
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": f"{FLOW_PREFIX}nonresource", "labels": dict(BENCH_LABEL)},
            "spec": {
                "priorityLevelConfiguration": {"name": "workload-low"},
                "matchingPrecedence": 5000,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [subject],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        }
    )
    return schemas


# ---------------------------------------------------------------------- the stage
@dataclass
class Stage:
    cluster: Cluster
    kubeconfig: Path
    work: Path
    created: list[tuple[str, ...]] = field(default_factory=list)

    def teardown(self) -> None:
        for args in reversed(self.created):
            self.cluster.kubectl("delete", *args, "--ignore-not-found", "--wait=false", check=False)


def set_up(cluster: Cluster, work: Path) -> Stage:
    # The chart's ServiceAccount and RBAC under the release `contextlm-bench`: the chart's
    # permissions, a name of its own (for the FlowSchemas).
    rendered = cluster.helm("template", RELEASE, str(CHART), "--namespace", SA_NAMESPACE)
    docs = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS]
    stage = Stage(cluster, work / "bench.kubeconfig", work)
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SA_NAMESPACE}})
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            doc["metadata"].setdefault("namespace", SA_NAMESPACE)
        scope = ("-n", doc["metadata"]["namespace"]) if "namespace" in doc["metadata"] else ()
        stage.created.append((doc["kind"].lower(), doc["metadata"]["name"], *scope))
    cluster.apply(docs)
    if not any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == RELEASE for d in docs):
        raise SystemExit(f"the chart rendered no ServiceAccount {RELEASE}")
    token = cluster.kubectl(
        "create", "token", RELEASE, "-n", SA_NAMESPACE, "--duration=24h"
    ).stdout.strip()
    user = f"system:serviceaccount:{SA_NAMESPACE}:{RELEASE}"
    stage.kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": cluster.env["CONTEXTLM_E2E_APISERVER"],
                            "certificate-authority": cluster.env["CONTEXTLM_E2E_CA"],
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "bench", "context": {"cluster": "e2e", "user": user}}],
                "current-context": "bench",
            }
        )
    )
    stage.kubeconfig.chmod(0o600)

    schemas = flow_schemas()
    cluster.apply(schemas)
    stage.created += [("flowschema", s["metadata"]["name"]) for s in schemas]

    # The harness's Service range is a /24 (about 250 ClusterIPs, shared with other
    # sessions' tests) and every AlignedModel gets a Service: a second ServiceCIDR gives
    # the largest run room without taking the others' addresses.
    # One left terminating by an earlier run (it waits for its addresses to be freed)
    # would vanish under this run: wait for it to go first.
    cluster.kubectl(
        "wait",
        "--for=delete",
        "servicecidr/contextlm-bench",
        "--timeout=600s",
        check=False,
        timeout=660,
    )
    cluster.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "contextlm-bench", "labels": dict(BENCH_LABEL)},
            "spec": {"cidrs": [SERVICE_CIDR]},
        }
    )
    cluster.kubectl("wait", "--for=condition=Ready", "servicecidr/contextlm-bench", "--timeout=60s")
    stage.created.insert(0, ("servicecidr", "contextlm-bench"))

    # A kwok node of our own: tainted so no other session's pod lands on it, labelled so
    # ours do, with room for every fake pod of the largest run.
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {
                **BENCH_LABEL,
                "type": "kwok",
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {
            "taints": [
                {"key": "contextlm.io/bench", "value": "operator-scale", "effect": "NoSchedule"}
            ]
        },
    }
    cluster.apply(node)
    stage.created.insert(0, ("node", NODE))  # deleted last, after the namespaces
    capacity = {"cpu": "4000", "memory": "16Ti", "pods": "5000", "ephemeral-storage": "10Ti"}
    cluster.kubectl(
        "patch",
        "node",
        NODE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"capacity": capacity, "allocatable": capacity}}),
    )
    wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in cluster.get("node", NODE).get("status", {}).get("conditions", [])
        ),
        timeout=60,
        message=f"kwok to make {NODE} Ready",
    )
    return stage


# ---------------------------------------------------------------------- one run
@dataclass
class Result:
    operator: str
    n: int
    times: dict[int, float]
    converge_s: float
    idle_s: float
    mine: Counter[str]
    everyone: Counter[str]
    peak_rss_mib: float
    cpu_s: float
    children: dict[str, Counter[str]]
    note: str = ""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def operator_command(which: str, namespace: str, port: int) -> list[str]:
    if which == "contextlm":
        return cluster_operator_command(namespace, port)
    return [
        sys.executable,
        "-m",
        "kopf",
        "run",
        str(REPO / "bench" / "minimal_operator.py"),
        "--standalone",
        "--namespace",
        namespace,
        # One argument: run_operator waits on its own port only for a bare --liveness.
        f"--liveness=http://127.0.0.1:{port}/healthz",
    ]


def operator_env(cluster: Cluster, operator_path: Path | None) -> dict[str, str]:
    # --operator-path: run another copy of contextlm_operator (say, the code before a
    # change) under the same conditions.
    path = {"PYTHONPATH": str(operator_path)} if operator_path else {}
    return {
        **path,
        "CONTEXTLM_STORE_KIND": "s3",
        "CONTEXTLM_STORE_ENDPOINT": cluster.env["CONTEXTLM_E2E_S3_ENDPOINT"],
        "CONTEXTLM_STORE_BUCKET": "contextlm-bench-scale",
        "CONTEXTLM_S3_ACCESS_KEY": cluster.env["CONTEXTLM_E2E_S3_ACCESS_KEY"],
        "CONTEXTLM_S3_SECRET_KEY": cluster.env["CONTEXTLM_E2E_S3_SECRET_KEY"],
        "CONTEXTLM_RECONCILE_INTERVAL": "",  # the default (30 s)
        "CONTEXTLM_COMMAND": json.dumps(["contextlm"]),
        "CONTEXTLM_IMAGE": "registry.invalid/contextlm/bench:none",
        "CONTEXTLM_JOB_NODE_SELECTOR": json.dumps(BENCH_LABEL),
        "CONTEXTLM_JOB_TOLERATIONS": json.dumps(TOLERATIONS),
    }


def _healthy(url: str, op: OperatorProcess) -> bool:
    op.assert_alive()
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def run_one(
    stage: Stage, admin: k8s.ApiClient, which: str, n: int, args: argparse.Namespace
) -> Result:
    cluster = stage.cluster
    namespace = f"bench-scale-{which}-{n}"
    print(f"\n[{which} N={n}] namespace {namespace}; {load()}", flush=True)
    cluster.kubectl(
        "delete", "namespace", namespace, "--ignore-not-found", "--timeout=600s", timeout=660
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": dict(BENCH_LABEL)},
        }
    )
    wait_for(
        lambda: cluster.exists("serviceaccount", "default", "-n", namespace),
        timeout=60,
        message=f"default ServiceAccount in {namespace}",
    )
    secrets: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    for i in range(n):
        s, o = resource_set(i, namespace, cluster.env["CONTEXTLM_E2E_S3_ENDPOINT"])
        secrets += s
        objects += o
    files = stage.work / f"{which}-{n}"
    files.mkdir(exist_ok=True)
    (files / "secrets.yaml").write_text(yaml.safe_dump_all(secrets))
    (files / "resources.yaml").write_text(yaml.safe_dump_all(objects))
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=bench-user",
        "-f",
        str(files / "secrets.yaml"),
        timeout=1800,
    )

    observed = Observed(
        CONTEXTLM_CHILDREN if which == "contextlm" else FLOOR_CHILDREN,
        need_status=which == "contextlm",
    )
    cluster.operator_kubeconfig = stage.kubeconfig
    port = free_port()
    with (
        watching(namespace, observed, admin),
        run_operator(
            cluster,
            command=operator_command(which, namespace, port),
            env=operator_env(cluster, args.operator_path if which == "contextlm" else None),
            log_dir=files,
        ) as op,
    ):
        wait_for(
            lambda: _healthy(f"http://127.0.0.1:{port}/healthz", op),
            timeout=120,
            message=lambda: f"operator health; log:\n{op.log()[-3000:]}",
        )
        started = time.monotonic()
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=bench-user",
            "-f",
            str(files / "resources.yaml"),
            timeout=1800,
        )
        applied = time.monotonic() - started
        print(f"  applied {len(objects)} objects in {applied:.1f}s; {load()}", flush=True)
        deadline = started + args.timeout
        last_print = started
        while True:
            times = observed.set_times(n)
            now = time.monotonic()
            if len(times) == n or now > deadline:
                break
            if now - last_print > 30:
                print(
                    f"  {len(times)}/{n} sets done after {now - started:.0f}s; {load()}", flush=True
                )
                last_print = now
            op.assert_alive()
            time.sleep(1)
        converge = time.monotonic() - started
        note = "" if len(times) == n else f"only {len(times)}/{n} sets done in {args.timeout}s"
        print(f"  {len(times)}/{n} sets done in {converge:.1f}s; {load()}", flush=True)

        # Idle: no watch event in the namespace for --settle seconds (the timer's own
        # no-op re-applies change nothing and so raise no event), then the window.
        settle_deadline = time.monotonic() + max(args.settle * 6, 300)
        while time.monotonic() - observed.last_event < args.settle:
            if time.monotonic() > settle_deadline:
                note += "; never quiet for --settle seconds (window taken anyway)"
                break
            time.sleep(1)
        idle_from = time.monotonic()
        mine0, all0 = scrape(cluster)
        time.sleep(args.window)
        mine1, all1 = scrape(cluster)
        idle = time.monotonic() - idle_from
        quiet = time.monotonic() - observed.last_event
        if quiet < idle:
            note += f"; watch events during the window (last {quiet:.0f}s before its end)"
        cpu_s = _cpu_seconds(op.proc.pid)
        peak = _vm_hwm_mib(op.proc.pid)
        print(f"  idle window {idle:.0f}s; {load()}", flush=True)
        children = _children_by_owner_kind(observed)
        # Deleted while the operator runs: anything it must finalise it can.
        cluster.kubectl(
            "delete", "namespace", namespace, "--timeout=900s", check=False, timeout=960
        )
    if observed.errors:
        print(f"  watch restarts: {len(observed.errors)} (last: {observed.errors[-1][:200]})")
    return Result(
        which,
        n,
        times,
        converge,
        idle,
        mine1 - mine0,
        all1 - all0,
        peak,
        cpu_s,
        children,
        note.lstrip("; "),
    )


def _release(admin: k8s.ApiClient, namespace: str) -> None:
    """After an interrupted run: drop kopf's finalizers, which no operator will remove."""
    api = k8s.CustomObjectsApi(admin)
    group, version = API.split("/")
    for plural in KINDS.values():
        try:
            listing = cast(
                dict[str, Any], api.list_namespaced_custom_object(group, version, namespace, plural)
            )
        except k8s.ApiException:
            return
        for obj in listing["items"]:
            if obj["metadata"].get("finalizers"):
                api.patch_namespaced_custom_object(
                    group,
                    version,
                    namespace,
                    plural,
                    obj["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children_by_owner_kind(observed: Observed) -> dict[str, Counter[str]]:
    result: dict[str, Counter[str]] = defaultdict(Counter)
    with observed.lock:
        for uid, (_, kind) in observed.owners.items():
            for child in observed.children.get(uid, {}):
                result[kind][child] += 1
    return result


# ---------------------------------------------------------------------- report
def row(r: Result) -> str:
    values = list(r.times.values())
    p50 = f"{percentile(values, 50):.1f}" if values else "-"
    p99 = f"{percentile(values, 99):.1f}" if values else "-"
    scale = 60 / r.idle_s
    reads = sum(v for k, v in r.mine.items() if k not in WRITES) * scale
    writes = sum(v for k, v in r.mine.items() if k in WRITES) * scale
    return (
        f"{r.n:>4} {r.operator:<10} {len(r.times):>4}/{r.n:<3} {p50:>7} {p99:>7}"
        f" {r.converge_s:>7.0f} {reads:>10.1f} {writes:>11.1f} {r.peak_rss_mib:>13.0f}"
        f" {r.cpu_s:>7.0f}"
    )


def report(results: list[Result], window: float) -> None:
    print("\nOperator at scale: contextlm operator vs the minimal kopf operator (floor), one run")
    print(
        "time = first object of a set seen -> every expected child exists and status is"
        " written (floor: its ConfigMaps exist)"
    )
    print(
        f"idle = requests by the operator's own ServiceAccount per minute, over a {window:.0f}s"
        " quiet window after convergence; contextlm reconcile timer 30 s (default)\n"
    )
    head = (
        f"{'N':>4} {'operator':<10} {'done':>8} {'p50 s':>7} {'p99 s':>7} {'all s':>7}"
        f" {'reads/min':>10} {'writes/min':>11} {'peak RSS MiB':>13} {'CPU s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(row(r))
    print(
        "\nIdle requests per minute by verb (the operator's ServiceAccount | whole API server,"
        " every client)"
    )
    for r in results:
        scale = 60 / r.idle_s
        mine = ", ".join(f"{k} {v * scale:.1f}" for k, v in sorted(r.mine.items()) if v) or "none"
        everyone = ", ".join(f"{k} {v * scale:.0f}" for k, v in sorted(r.everyone.items()) if v)
        print(f"  N={r.n:<4} {r.operator:<10} {mine} | {everyone}")
    print("\nChildren found per owner kind (count of owners with at least one of that kind)")
    for r in results:
        found = "; ".join(
            f"{kind}: " + ", ".join(f"{c} {k}" for k, c in sorted(kids.items()))
            for kind, kids in sorted(r.children.items())
        )
        print(f"  N={r.n:<4} {r.operator:<10} {found or 'none'}")
    notes = [f"  N={r.n} {r.operator}: {r.note}" for r in results if r.note]
    if notes:
        print("\nNotes\n" + "\n".join(notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,500", help="comma-separated N")
    parser.add_argument(
        "--operators", default="contextlm,minimal", help="which to run, in this order, for each N"
    )
    parser.add_argument("--window", type=float, default=120, help="idle window, seconds")
    parser.add_argument(
        "--settle",
        type=float,
        default=35,
        help="seconds without a watch event before the window starts",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="most seconds to wait for the sets to converge"
    )
    parser.add_argument(
        "--operator-path",
        type=Path,
        default=None,
        help="a folder holding another contextlm_operator package to measure instead",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep manifests and logs here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    operators = [o for o in args.operators.split(",") if o]
    if set(operators) - {"contextlm", "minimal"}:
        parser.error("--operators takes contextlm and/or minimal")

    # A terminated run still cleans up (finally blocks run on SystemExit; a background
    # job started without job control ignores SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster = start_cluster()  # reuses the running control plane; never stops it
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=e2e-user",
        "-f",
        str(REPO / "crds"),
    )
    k8s_config.load_kube_config(config_file=str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
    admin = k8s.ApiClient()
    work = args.work or Path(tempfile.mkdtemp(prefix="operator-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"control plane {cluster.env['CONTEXTLM_E2E_APISERVER']}; work dir {work};"
        f" {os.cpu_count()} CPUs; {load()}",
        flush=True,
    )
    if args.operator_path:
        print(f"contextlm operator code from {args.operator_path}", flush=True)
    stage = set_up(cluster, work)
    results: list[Result] = []
    try:
        for n in sizes:
            for which in operators:
                results.append(run_one(stage, admin, which, n, args))
                print("  " + row(results[-1]), flush=True)
    finally:
        for n in sizes:
            for which in operators:
                _release(admin, f"bench-scale-{which}-{n}")
                cluster.kubectl(
                    "delete",
                    "namespace",
                    f"bench-scale-{which}-{n}",
                    "--ignore-not-found",
                    "--wait=false",
                    check=False,
                )
        stage.teardown()
    report(results, args.window)
    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
