"""The `contextlm` command: one subcommand per component.

Each subcommand imports what it needs inside its handler, so `contextlm crds` never
pays for torch and a runtime image runs any component with the same entry point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__

Handler = Callable[[argparse.Namespace], int]


def _crds(args: argparse.Namespace) -> int:
    from .crds import check_crds, write_crds

    if args.check:
        stale = check_crds(args.root)
        for path in stale:
            print(f"out of date: {path} (run `contextlm crds`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_crds(args.root):
        print(f"wrote {path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .manifests import validate_paths

    failures = 0
    for source, result in validate_paths(args.paths):
        if isinstance(result, str):
            print(f"ok    {source}: {result}")
        else:
            failures += 1
            for error in result:
                print(f"FAIL  {source}: {error}")
    return 1 if failures else 0


# Runtime components: name -> (module, help). Each module has `run(args) -> int` and
# optionally `add_arguments(parser)` for options of its own; it is imported only when
# its subcommand runs, so one component's dependencies never break another command.
COMPONENTS: dict[str, tuple[str, str]] = {
    "up": ("contextlm.embedded.up", "run a resource set on this machine: the embedded default"),
    "ask": ("contextlm.embedded.commands.ask", "ask the system `contextlm up` serves a question"),
    "feedback": (
        "contextlm.embedded.commands.feedback",
        "record thumbs up/down (and a correction) on an answer",
    ),
    "status": (
        "contextlm.embedded.commands.status",
        "conditions and phases of the resources `contextlm up` runs",
    ),
    "align": (
        "contextlm.embedded.align",
        "run an AlignmentRun on the embedded system's feedback (when the trigger fires)",
    ),
    "artifact": ("contextlm.runtime.artifact", "pull an artifact from the store or push one"),
    "sync": ("contextlm.runtime.sync", "fetch, extract and chunk a corpus into a snapshot"),
    "index": ("contextlm.runtime.index", "embed a snapshot and build its indexes"),
    "retriever": ("contextlm.runtime.retriever", "serve hybrid retrieval over HTTP"),
    "generator": (
        "contextlm.runtime.generator",
        "serve a causal LM over the KServe v2 / Triton protocol",
    ),
    "gateway": ("contextlm.runtime.gateway", "answer questions with citations; record feedback"),
    "migrate": ("contextlm.runtime.feedback.migrate", "upgrade the feedback store's schema"),
    "export": ("contextlm.runtime.feedback.export", "export a feedback window as training data"),
    "train": ("contextlm.runtime.train", "align a model revision on feedback (KTO/APO/DPO/SFT)"),
    "evaluate": ("contextlm.runtime.evaluate", "score a candidate revision and decide the gate"),
}


def _component(command: str, module_name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            own = argparse.ArgumentParser(prog=f"contextlm {command}")
            module.add_arguments(own)
            own.parse_args(args.extra, namespace=args)
        elif args.extra:
            raise SystemExit(f"contextlm {command}: unrecognized arguments: {' '.join(args.extra)}")
        result: int = module.run(args)
        return result

    return handler


def _add_components(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, (module_name, help_text) in COMPONENTS.items():
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--config", help="JSON config file (default: $CONTEXTLM_CONFIG)")
        parser.add_argument(
            "--termination-log",
            default="/dev/termination-log",
            help="where the one-line JSON result is also written (Kubernetes reads it)",
        )
        parser.set_defaults(handler=_component(name, module_name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contextlm",
        description="Managed contextual language-model systems on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"contextlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser("crds", help="generate the CRDs from the resource models")
    crds.add_argument("--check", action="store_true", help="exit 1 if a generated file differs")
    crds.add_argument("--root", default=".", help="repository root (default: .)")
    crds.set_defaults(handler=_crds)

    validate = sub.add_parser(
        "validate", help="check manifests against the resource models (files or folders)"
    )
    validate.add_argument("paths", nargs="+", help="YAML files or folders of them")
    validate.set_defaults(handler=_validate)
    _add_components(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command not in COMPONENTS:
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
