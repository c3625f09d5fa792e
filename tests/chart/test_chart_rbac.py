"""The chart's RBAC is least privilege: no wildcards, only what the operator's API module
and kopf use, one definition for ClusterRole and Roles, Roles for a namespaced install."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_tools import FULL, NAMESPACE, NAMESPACED, by_kind, one, render

from contextlm.api import GROUP, KINDS
from contextlm_operator import kube

# What kopf itself needs beyond the operator's own calls (kopf 1.45 sources:
# _core/reactor/observation.py, _core/engines/peering.py, _cogs/clients/events.py).
KOPF_CLUSTER = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
PEERING_VERBS = {"list", "watch", "patch"}
# Verbs that hand out more than data access: never granted.
DANGEROUS = {"escalate", "bind", "impersonate", "deletecollection", "*"}
# Child kinds the operator writes with server-side apply (kube.apply): they need create
# and patch. Pods and Secrets are only read, Events only created.
READ_ONLY = {("", "pods"): {"list"}, ("", "secrets"): {"get"}}
CREATE_ONLY = {("", "events"): {"create"}}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, over rules without resourceNames."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        if rule.get("resourceNames"):
            continue
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def all_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]


def operator_resources() -> dict[tuple[str, str], str]:
    """(apiGroup, plural) -> kind, for everything kube.py can address."""
    out = {}
    for (api_version, kind), plural in kube.PLURALS.items():
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        out[(group, plural)] = kind
    return out


@pytest.mark.parametrize("values", [{}, FULL, NAMESPACED], ids=["default", "full", "namespaced"])
def test_no_wildcards_or_dangerous_verbs(values: dict[str, Any], tmp_path: Path) -> None:
    rules = all_rules(render(values, tmp_path))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule
        assert not set(rule["verbs"]) & DANGEROUS, rule
        assert not any(r.endswith("/*") or r.startswith("*/") for r in rule["resources"]), rule
        assert "nonResourceURLs" not in rule, rule


def test_every_grant_is_something_the_operator_or_kopf_uses(tmp_path: Path) -> None:
    known = operator_resources()
    for kind in KINDS:
        for sub in ("status", "finalizers"):
            known[(GROUP, f"{kind.plural}/{sub}")] = kind.name
    granted = grants(all_rules(render({}, tmp_path)))
    kopf = set(KOPF_CLUSTER) | {("kopf.dev", "clusterkopfpeerings")}
    unexplained = sorted(set(granted) - set(known) - kopf)
    assert unexplained == [], f"RBAC grants resources kube.py never addresses: {unexplained}"
    for key, verbs in KOPF_CLUSTER.items():
        assert granted[key] == verbs


def test_children_are_applied_and_reads_stay_reads(tmp_path: Path) -> None:
    granted = grants(all_rules(render({}, tmp_path)))
    own = {(GROUP, k.plural) for k in KINDS}
    for key in operator_resources():
        if key in own:
            continue
        verbs = granted.get(key)
        assert verbs is not None, f"kube.py addresses {key} but the chart grants nothing"
        if key in READ_ONLY:
            assert verbs == READ_ONLY[key], (key, verbs)
        elif key in CREATE_ONLY:
            assert verbs == CREATE_ONLY[key], (key, verbs)
        else:
            # Server-side apply creates when absent; pruning lists and deletes.
            assert verbs == {"get", "list", "create", "patch", "delete"}, (key, verbs)
    for key in own:
        assert granted[key] - {"create"} == {"get", "list", "watch", "patch"}, key
        assert granted[(GROUP, f"{key[1]}/status")] == {"patch"}
        assert granted[(GROUP, f"{key[1]}/finalizers")] == {"update"}
    assert granted[(GROUP, "alignmentruns")] == {"get", "list", "watch", "patch", "create"}
    updates = [k for k, v in granted.items() if "update" in v and not k[1].endswith("/finalizers")]
    assert updates == [], "nothing is updated: the operator patches or applies"
    watched = [k for k, v in granted.items() if "watch" in v]
    assert set(watched) <= own | set(KOPF_CLUSTER) | {("kopf.dev", "clusterkopfpeerings")}


def test_cluster_wide_install_binds_one_cluster_role(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "contextlm", "namespace": NAMESPACE}
    ]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    granted = grants(role["rules"])
    assert ("", "namespaces") not in granted, "kopf does not list namespaces cluster-wide"
    peering = [r for r in role["rules"] if r.get("resourceNames")]
    assert peering == [
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings"],
            "resourceNames": ["contextlm"],
            "verbs": ["patch"],
        }
    ]
    assert granted[("kopf.dev", "clusterkopfpeerings")] == PEERING_VERBS - {"patch"}


def test_namespaced_install_gets_roles_and_only_crd_discovery_cluster_wide(
    tmp_path: Path,
) -> None:
    docs = render(NAMESPACED, tmp_path)
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert grants(cluster_role["rules"]) == KOPF_CLUSTER
    roles = by_kind(docs, "Role")
    assert len(roles) == 2
    for role in roles:
        granted = grants(role["rules"])
        assert ("apiextensions.k8s.io", "customresourcedefinitions") not in granted
        assert granted[("kopf.dev", "kopfpeerings")] == {"list", "watch"}
        assert [r["resources"] for r in role["rules"] if r.get("resourceNames")] == [
            ["kopfpeerings"]
        ]


def test_cluster_role_and_roles_share_one_definition(tmp_path: Path) -> None:
    cluster = one(render({"leaderElection": {"enabled": False}}, tmp_path), "ClusterRole")
    standalone = {"watchNamespaces": ["team-a", "team-b"], "leaderElection": {"enabled": False}}
    namespaced = render(standalone, tmp_path)
    discovery = by_kind(namespaced, "ClusterRole")[0]["rules"]
    for role in by_kind(namespaced, "Role"):
        assert role["rules"] + discovery == cluster["rules"]


def test_rbac_can_be_brought_by_the_user(tmp_path: Path) -> None:
    docs = render({"rbac": {"create": False}}, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
