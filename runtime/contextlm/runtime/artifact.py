"""`contextlm artifact pull|push`: move an artifact between the store and a directory.

Used by pods whose main image is not ours (the TensorRT-LLM engine build runs in
NVIDIA's image): an init container pulls the model revision onto the shared cache
volume, and a last container pushes the built engine back and publishes its manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pydantic import BaseModel, Field

from .config import load_config
from .store import StoreConfig, StoreError, open_store

log = logging.getLogger("contextlm.artifact")


class ArtifactConfig(BaseModel):
    """What to move: a store prefix and a local directory."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    prefix: str = Field(description="Artifact prefix in the store.")
    directory: str = Field(description="Local directory.")
    manifest: dict[str, object] = Field(
        default_factory=dict, description="push: manifest published after the upload."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["pull", "push"])


def _result(path: str, payload: dict[str, object]) -> None:
    line = json.dumps(payload)
    print(line)
    try:
        Path(path).write_text(line)
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_config(ArtifactConfig, args.config)
    store = open_store(config.store)
    directory = Path(config.directory)
    try:
        if args.action == "pull":
            if store.manifest(config.prefix) is None and not any(store.list(config.prefix + "/")):
                _result(
                    args.termination_log,
                    {"error": f"{config.prefix} is not in the store", "reason": "ArtifactNotFound"},
                )
                return 2
            if (directory / ".complete").exists():
                log.info("%s already pulled into %s", config.prefix, directory)
            else:
                store.download_dir(config.prefix, directory)
                (directory / ".complete").touch()
        else:
            store.upload_dir(config.prefix, directory)
            store.publish(config.prefix, dict(config.manifest))
    except StoreError as exc:
        _result(args.termination_log, {"error": str(exc), "reason": "StoreUnavailable"})
        return 2
    _result(args.termination_log, {"action": args.action, "prefix": config.prefix})
    return 0
