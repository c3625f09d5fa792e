"""Applying the optional children every serving kind may have."""

from __future__ import annotations

from contextlm.api.common import Autoscaling

from .. import kube
from ..render.common import Owner, hpa


def apply_hpa(owner: Owner, component: str, scaling: Autoscaling | None) -> None:
    """An autoscaler when asked for, none otherwise."""
    if scaling is None:
        kube.delete(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            owner.namespace,
            f"{owner.name}-{component}",
        )
    else:
        kube.apply(hpa(owner, component, scaling))
