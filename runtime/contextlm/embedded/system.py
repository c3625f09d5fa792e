"""The resource set `contextlm up` runs: read, validated and resolved before anything starts.

The files are the ones a cluster takes (`kubectl apply -f`), validated by the same models
(`contextlm.api`), so a malformed file is refused here with its file name and the field
path, exactly as `contextlm validate` and the API server would refuse it. What a cluster
would resolve by name at run time (a ConfigMap or a claim that holds documents) is
resolved here to a local folder, so an unresolvable reference is also refused up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from ..api import (
    API_VERSION,
    AlignedModel,
    ContextualDeployment,
    Corpus,
    InvalidResource,
    RetrievalStack,
    validate_manifest,
)

T = TypeVar("T", bound=BaseModel)
DEFAULT_NAMESPACE = "default"


class EmbeddedError(RuntimeError):
    """The resource set cannot run embedded, or the system is not up; the message says why."""


@dataclass
class System:
    """One ContextualDeployment with everything it references."""

    deployment: ContextualDeployment
    stack: RetrievalStack
    corpus: Corpus
    model: AlignedModel
    namespace: str
    files: list[Path]
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)  # where the resource files are

    def config_map_dir(self, name: str, scratch: Path) -> Path:
        """A folder holding ConfigMap `name` as a pod would see it mounted: one file per
        key. A ConfigMap in the files is written under `scratch`; otherwise a folder of
        that name beside the resource files stands for it (what `kubectl create configmap
        NAME --from-file=NAME/` would upload)."""
        if name in self.config_maps:
            target = scratch / "configmaps" / name
            target.mkdir(parents=True, exist_ok=True)
            for old in target.iterdir():
                if old.name not in self.config_maps[name]:
                    old.unlink()
            for key, value in self.config_maps[name].items():
                (target / key).write_text(value)
            return target
        for folder in self.folders:
            if (folder / name).is_dir():
                return (folder / name).resolve()
        raise EmbeddedError(
            f"ConfigMap {name} is neither in the resource files nor a folder {name}/ beside"
            f" them ({', '.join(str(f) for f in self.folders)})"
        )

    def claim_dir(self, claim: str, path: str, volumes: dict[str, Path]) -> Path:
        """The local folder standing for `path` inside PersistentVolumeClaim `claim`."""
        root = volumes.get(claim)
        if root is None:
            root = next((f / claim for f in self.folders if (f / claim).is_dir()), None)
        if root is None:
            raise EmbeddedError(
                f"Corpus {self.corpus.metadata.name}: spec.source.pvc.claimName {claim} has no"
                f" local folder: pass --volume {claim}=DIR or put a folder {claim}/ beside the"
                " resource files"
            )
        inside = (root / path.lstrip("/")).resolve()
        if not inside.is_dir():
            raise EmbeddedError(f"spec.source.pvc.path {path}: {inside} is not a folder")
        return inside


def _files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.glob("*.y*ml") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise EmbeddedError(f"{raw}: no such file or folder")
    if not files:
        raise EmbeddedError(f"no YAML files in {', '.join(paths)}")
    return files


def _documents(file: Path) -> list[tuple[int, Any]]:
    try:
        return [(i, d) for i, d in enumerate(yaml.safe_load_all(file.read_text())) if d is not None]
    except yaml.YAMLError as exc:
        raise EmbeddedError(f"{file}: not valid YAML: {exc}") from None


def read_resources(paths: list[str]) -> tuple[list[Path], dict[tuple[str, str], Any]]:
    """Every contextlm resource and ConfigMap in the files, validated; (files, objects by
    (kind, name)). Errors name the file, the document and each offending field."""
    files = _files(paths)
    objects: dict[tuple[str, str], Any] = {}
    problems: list[str] = []
    for file in files:
        for index, doc in _documents(file):
            where = f"{file} (document {index + 1})"
            if not isinstance(doc, dict):
                problems.append(f"{where}: must be a mapping")
                continue
            name = str((doc.get("metadata") or {}).get("name", "?"))
            if doc.get("apiVersion") == "v1" and doc.get("kind") == "ConfigMap":
                objects[("ConfigMap", name)] = _config_map(doc, where)
            elif str(doc.get("apiVersion", "")).startswith("contextlm.io/"):
                try:
                    objects[(str(doc["kind"]), name)] = validate_manifest(doc)
                except InvalidResource as exc:
                    problems += [f"{where} {doc.get('kind')}/{name}: {e}" for e in exc.errors]
    if problems:
        raise EmbeddedError("invalid resources:\n  " + "\n  ".join(problems))
    return files, objects


def _config_map(doc: dict[str, Any], where: str) -> dict[str, str]:
    data = doc.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise EmbeddedError(f"{where}: ConfigMap data must map keys to strings")
    return {str(k): v for k, v in data.items()}


def load_system(paths: list[str]) -> System:
    """The one ContextualDeployment in `paths` and what it references, or EmbeddedError."""
    files, objects = read_resources(paths)
    deployments = [o for (k, _), o in objects.items() if k == "ContextualDeployment"]
    if len(deployments) != 1:
        raise EmbeddedError(
            f"expected one ContextualDeployment in {', '.join(map(str, files))},"
            f" found {len(deployments)}"
        )
    cd: ContextualDeployment = deployments[0]

    def need(kind: str, name: str, model: type[T], field_path: str) -> T:
        found = objects.get((kind, name))
        if not isinstance(found, model):
            raise EmbeddedError(f"{kind} {name} (named in {field_path}) is not in the files")
        return found

    stack = need("RetrievalStack", cd.spec.retrieval_ref.name, RetrievalStack,
                 f"ContextualDeployment {cd.metadata.name} spec.retrievalRef")  # fmt: skip
    corpus = need("Corpus", stack.spec.corpus_ref.name, Corpus,
                  f"RetrievalStack {stack.metadata.name} spec.corpusRef")  # fmt: skip
    model = need("AlignedModel", cd.spec.model_ref.name, AlignedModel,
                 f"ContextualDeployment {cd.metadata.name} spec.modelRef")  # fmt: skip
    if model.spec.serving.engine != "transformers":
        raise EmbeddedError(
            f"AlignedModel {model.metadata.name} spec.serving.engine: the embedded default"
            " serves `transformers` (CPU) only; tensorrt-llm needs a GPU cluster"
        )
    if corpus.spec.source.s3 is not None:
        raise EmbeddedError(
            f"Corpus {corpus.metadata.name} spec.source.s3: the embedded default reads"
            " documents from inline, configMap or pvc sources (a local folder)"
        )
    namespaces = {o.metadata.namespace or DEFAULT_NAMESPACE for o in (cd, stack, corpus, model)}
    if len(namespaces) != 1:
        raise EmbeddedError(f"the resources are in several namespaces: {sorted(namespaces)}")
    config_maps = {n: data for (k, n), data in objects.items() if k == "ConfigMap"}
    folders = sorted({f.parent.resolve() for f in files})
    return System(
        deployment=cd, stack=stack, corpus=corpus, model=model, namespace=namespaces.pop(),
        files=files, config_maps=config_maps, folders=folders,
    )  # fmt: skip


__all__ = ["API_VERSION", "EmbeddedError", "System", "load_system", "read_resources"]
