"""A minimal kopf operator used only to prove the harness's run_operator helper: it
marks ConfigMaps labelled ``contextlm.io/e2e-probe`` as seen, with the chart's
ServiceAccount permissions (configmaps: get/list/watch/patch)."""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's own bookkeeping under our prefix, as the real operator does.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="e2e-probe.contextlm.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="e2e-probe.contextlm.io")
    settings.watching.server_timeout = 60


@kopf.on.create("", "v1", "configmaps", labels={"contextlm.io/e2e-probe": kopf.PRESENT})
def seen(patch: kopf.Patch, name: str, **_: Any) -> None:
    patch.metadata.annotations["contextlm.io/e2e-probe-seen"] = name
