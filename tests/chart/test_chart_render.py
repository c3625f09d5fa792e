"""The Helm chart with the real `helm`: lint, render with default and production values,
refuse typos, and produce hardened, well-formed manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_tools import CHART, FULL, NAMESPACE, NAMESPACED, RELEASE, by_kind, helm, one, render

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cluster-wide, everything on": FULL,
    "namespaced, everything on": NAMESPACED,
    "standalone": {"leaderElection": {"enabled": False}},
    "local store, own account": {
        "store": {"kind": "local"},
        "serviceAccount": {"create": False, "name": "contextlm-sa"},
        "rbac": {"create": False},
    },
}
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "ConfigMap",
    "Role",
    "RoleBinding",
    "KopfPeering",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


def values_path(values: dict[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(name: str, tmp_path: Path) -> None:
    result = helm("lint", "--strict", str(CHART), *values_path(VALUE_SETS[name], tmp_path))
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_well_formed(name: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[name], tmp_path)
    seen = set()
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        assert doc["apiVersion"] and meta["name"], doc
        assert kind in NAMESPACED_KINDS | CLUSTER_KINDS, f"unexpected kind {kind}"
        if kind in CLUSTER_KINDS:
            assert "namespace" not in meta, f"{kind}/{meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace"), f"{kind}/{meta['name']} has no namespace"
        key = (kind, meta.get("namespace"), meta["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", (kind, labels)
        assert labels.get("app.kubernetes.io/instance") == RELEASE, (kind, labels)


def test_default_install_is_cluster_wide_with_one_replica(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--all-namespaces"]
    assert container["image"] == "contextlm/contextlm:0.1.0"
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "ClusterKopfPeering",
    }
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "contextlm"


def test_namespaced_install_watches_exactly_its_namespaces(tmp_path: Path) -> None:
    docs = render(NAMESPACED, tmp_path)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--namespace=team-a", "--namespace=team-b"]
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == [
        "team-a",
        "team-b",
    ]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "contextlm", "namespace": NAMESPACE}
        ]
    peerings = by_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(docs, "ClusterKopfPeering")
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_standalone_has_no_peering(tmp_path: Path) -> None:
    docs = render({"leaderElection": {"enabled": False}}, tmp_path)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" in container["args"]
    assert not by_kind(docs, "ClusterKopfPeering") and not by_kind(docs, "KopfPeering")
    rules = one(docs, "ClusterRole")["rules"]
    assert not [r for r in rules if r["apiGroups"] == ["kopf.dev"]]


def test_two_replicas_get_a_disruption_budget_and_spread(tmp_path: Path) -> None:
    assert not by_kind(render({}, tmp_path), "PodDisruptionBudget")
    docs = render({"replicaCount": 2}, tmp_path)
    pdb = one(docs, "PodDisruptionBudget")
    deployment = one(docs, "Deployment")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["labelSelector"] == deployment["spec"]["selector"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection"),
        ({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}}, "minAvailable"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "metrics.service",
        ),
    ],
)
def test_inconsistent_values_fail(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    result = helm("template", RELEASE, str(CHART), *values_path(values, tmp_path), check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCont": 2},  # top level
        {"image": {"tga": "1.0"}},  # nested
        {"metrics": {"serviceMonitor": {"enable": True}}},  # deep
        {"prometheusRule": {"thresholds": {"errorRato": 0.1}}},  # deeper
        {"podDisruptionBudget": {"maxUnavailable": 1}},
        {"replicaCount": "two"},  # wrong type
        {"watchNamespaces": ["Team_A"]},  # not a namespace name
        {"store": {"kind": "gcs"}},  # not an enum value
        {"image": {"pullPolicy": "Sometimes"}},
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
    ],
)
def test_values_typo_fails_template_lint_and_install(
    values: dict[str, Any], tmp_path: Path
) -> None:
    args = values_path(values, tmp_path)
    for command in (
        ["template", RELEASE, str(CHART)],
        ["lint", "--strict", str(CHART)],
        ["install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE],
    ):
        result = helm(*command, *args, check=False)
        assert result.returncode != 0, f"helm {command[0]} accepted {values}"
        assert "schema" in (result.stdout + result.stderr).lower() or "at '/" in (
            result.stdout + result.stderr
        ), result.stdout + result.stderr


def _objects_with_additional_properties(node: Any, path: str = "") -> list[str]:
    """Paths of schema objects that declare properties but allow unknown keys."""
    found = []
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            found.append(path or "/")
        for key, value in node.items():
            found += _objects_with_additional_properties(value, f"{path}/{key}")
    return found


def test_schema_is_strict_and_covers_every_default() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _objects_with_additional_properties(schema) == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], spec: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            assert key in spec.get("properties", {}), f"{path}{key} is not in the schema"
            sub = spec["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                walk(value, sub, f"{path}{key}.")

    walk(values, schema, "")


def test_image_repository_names_no_registry_host() -> None:
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    first = repository.split("/")[0]
    assert "." not in first and ":" not in first and first != "localhost", repository


def test_image_digest_pins_operator_and_workloads(tmp_path: Path) -> None:
    digest = "sha256:" + "ab" * 32
    docs = render({"image": {"repository": "acme/contextlm", "digest": digest}}, tmp_path)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"acme/contextlm@{digest}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONTEXTLM_IMAGE"] == f"acme/contextlm@{digest}"


def test_scheduling_and_pod_values_reach_the_pod(tmp_path: Path) -> None:
    values = {
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": "system-cluster-critical",
        "imagePullSecrets": [{"name": "regcred"}],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "podAnnotations": {"team": "ml"},
        "podLabels": {"cost-center": "42"},
        "resources": {"requests": {"cpu": "200m", "memory": "300Mi"}, "limits": {"memory": "1Gi"}},
        "jobs": {"nodeSelector": {"pool": "batch"}, "tolerations": []},
        "serviceAccount": {"annotations": {"iam": "role"}},
    }
    docs = render(values, tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    assert pod["metadata"]["annotations"] == {"team": "ml"}
    assert pod["metadata"]["labels"]["cost-center"] == "42"
    assert container["resources"] == values["resources"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["CONTEXTLM_JOB_NODE_SELECTOR"]) == {"pool": "batch"}
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"iam": "role"}


def test_operator_settings_come_from_values(tmp_path: Path) -> None:
    """The environment the chart sets is the one OperatorSettings.from_env reads."""
    from contextlm_operator.settings import OperatorSettings

    values = {
        "store": {"endpoint": "http://minio.storage:9000", "bucket": "rag", "prefix": "prod"},
        "reconcileInterval": 45,
        "metrics": {"port": 9100},
        "jobs": {"tolerations": [{"key": "batch", "operator": "Exists"}]},
    }
    container = one(render(values, tmp_path), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = OperatorSettings.from_env(env)
    assert settings.store.endpoint == "http://minio.storage:9000"
    assert settings.store.bucket == "rag" and settings.store.prefix == "prod"
    assert settings.reconcile_interval == 45
    assert settings.metrics_port == 9100
    assert settings.job_tolerations == [{"key": "batch", "operator": "Exists"}]
    assert settings.image == "contextlm/contextlm:0.1.0"
    assert container["ports"][0]["containerPort"] == 9100


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_are_hardened(name: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[name], tmp_path)
    for deployment in by_kind(docs, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True
        # The operator needs its token; nothing else about the pod asks for privileges.
        assert spec["automountServiceAccountToken"] is True
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert not sc.get("privileged"), container["name"]
            assert container["resources"]["requests"], container["name"]
            assert container["resources"]["limits"]["memory"], container["name"]
            assert container["livenessProbe"] and container["readinessProbe"]
        writable = {m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
        assert writable == {"/tmp"}
    for account in by_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_monitoring_objects(tmp_path: Path) -> None:
    docs = render(FULL, tmp_path)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The ServiceMonitor selects exactly the metrics Service, by its labels and port name.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    pod_monitor = one(docs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    relabel = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {r["targetLabel"] for r in relabel} == {"resource", "component"}
    dashboard = [d for d in by_kind(docs, "ConfigMap") if "contextlm.json" in d["data"]]
    assert dashboard and dashboard[0]["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_monitoring_objects_can_live_elsewhere(tmp_path: Path) -> None:
    values = {
        "metrics": {"serviceMonitor": {"enabled": True, "namespace": "monitoring"}},
        "prometheusRule": {"enabled": True, "namespace": "monitoring"},
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "grafana",
            # Helm merges maps: null removes the default sidecar label.
            "labels": {"dashboards": "contextlm", "grafana_dashboard": None},
            "annotations": {"grafana_folder": "ML"},
        },
    }
    docs = render(values, tmp_path)
    assert one(docs, "ServiceMonitor")["metadata"]["namespace"] == "monitoring"
    assert one(docs, "ServiceMonitor")["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert one(docs, "PrometheusRule")["metadata"]["namespace"] == "monitoring"
    (dashboard,) = [d for d in by_kind(docs, "ConfigMap") if "contextlm.json" in d["data"]]
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["dashboards"] == "contextlm"
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_notes_tell_what_to_apply_next(tmp_path: Path) -> None:
    result = helm(
        "install",
        RELEASE,
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        *values_path(NAMESPACED, tmp_path),
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f examples/production/" in notes
    assert "team-a, team-b" in notes
    assert "create secret generic contextlm-store" in notes
    assert "ServiceMonitor contextlm" in notes and "PrometheusRule contextlm" in notes
