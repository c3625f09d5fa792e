"""Exec a container's process inside a private mount namespace with its volumes mounted.

The e2e kubelet starts ``unshare --mount --propagation private -- python -m
harness.nsexec SPEC``: the bind mounts made here are visible only to this process and
its children, so two pods can both mount something at ``/data`` or ``/etc/config``
exactly as their manifests say, without a container runtime. Mount points that do not
exist on the host are created (as empty directories or files) and listed in the spec's
``created`` file so the kubelet can remove them when the pod is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _ensure_target(target: str, *, is_file: bool, created: list[str]) -> None:
    if os.path.lexists(target):
        return
    parent = os.path.dirname(target)
    missing: list[str] = []
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory)
        created.append(directory)
    if is_file:
        with open(target, "a", encoding="utf-8"):
            pass
    else:
        os.mkdir(target)
    created.append(target)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    created: list[str] = []
    try:
        for mount in spec["mounts"]:
            source, target = mount["source"], mount["target"]
            _ensure_target(target, is_file=os.path.isfile(source), created=created)
            subprocess.run(["mount", "--bind", source, target], check=True)
            if mount.get("readOnly"):
                subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    finally:
        with open(spec["created"], "a", encoding="utf-8") as handle:
            handle.writelines(path + "\n" for path in created)
    os.makedirs(spec["cwd"], exist_ok=True)  # a runtime creates a missing workingDir too
    os.chdir(spec["cwd"])
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        # Exit code 127 as a shell would, with a message the kubelet turns into the
        # container's termination message (the runtime's "executable file not found").
        print(f"exec {argv[0]!r} failed: {exc}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
