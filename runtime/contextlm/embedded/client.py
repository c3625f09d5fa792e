"""`contextlm ask`, `feedback` and `status`: talk to the system `contextlm up` serves.

They find it through the state file in the data dir (the same default as `up`), so no
URL is typed; `--output json` prints exactly what the gateway answered, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .state import DEFAULT_DATA, State, StateFile, running_state
from .system import EmbeddedError


def post(url: str, body: dict[str, Any], *, timeout: float = 600) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise EmbeddedError(f"{url} answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise EmbeddedError(f"{url} is not answering ({exc.reason}); is `contextlm up` running?")


def ask(state: State, question: str, *, top_k: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question}
    if top_k:
        body["topK"] = top_k
    return post(f"{state.endpoint}/v1/query", body)


def feedback(state: State, query_id: str, rating: str, correction: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query_id": query_id, "rating": rating,
                            "idempotency_key": str(uuid.uuid4())}  # fmt: skip
    if correction:
        body["correction"] = correction
    return post(f"{state.endpoint}/v1/feedback", body, timeout=60)


def print_answer(answer: dict[str, Any], *, output: str) -> None:
    if output == "json":
        print(json.dumps(answer), flush=True)
        return
    print(answer.get("answer", "").strip())
    for cite in answer.get("citations", []):
        print(f"  [{cite['n']}] {cite['doc_id']}  {cite['uri']}")
    if answer.get("invalid_citations"):
        print(f"  (markers naming no passage: {answer['invalid_citations']})")
    print(
        f"query_id {answer.get('query_id')}  revision {answer.get('model_revision')}"
        f"  index {answer.get('index_version')}\n"
        f'  contextlm feedback {answer.get("query_id")} up|down [--correction "..."]',
        flush=True,
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA,
        help=f"the data dir of `contextlm up` (default: {DEFAULT_DATA})",
    )
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text")  # fmt: skip


def _guard(fn: Any, args: argparse.Namespace) -> int:
    try:
        result: int = fn(args)
        return result
    except EmbeddedError as exc:
        print(f"contextlm {args.command}: {exc}", file=sys.stderr)
        return 1


# `contextlm ask` -----------------------------------------------------------------------


def add_ask_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", nargs="+", help="the question")
    parser.add_argument("--top-k", type=int, default=None, help="chunks to retrieve")
    _common(parser)


def run_ask(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        state = running_state(a.data_dir.expanduser())
        print_answer(ask(state, " ".join(a.question), top_k=a.top_k), output=a.output)
        return 0

    return _guard(go, args)


# `contextlm feedback` ------------------------------------------------------------------


def add_feedback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query_id", help="the query_id `contextlm ask` printed")
    parser.add_argument("rating", choices=("up", "down"))
    parser.add_argument("--correction", default=None, help="what the answer should have said")
    _common(parser)


def run_feedback(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        state = running_state(a.data_dir.expanduser())
        answer = feedback(state, a.query_id, a.rating, a.correction)
        if a.output == "json":
            print(json.dumps(answer), flush=True)
        else:
            print(f"recorded {a.rating} for {a.query_id}", flush=True)
        return 0

    return _guard(go, args)


# `contextlm status` --------------------------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def resources(state: State) -> list[dict[str, Any]]:
    """Each resource as `kubectl get -o json` would show it: kind, name, status."""
    from .align import feedback_counts

    out: list[dict[str, Any]] = []
    pairs = (("Corpus", state.corpus), ("RetrievalStack", state.stack),
             ("AlignedModel", state.model), ("ContextualDeployment", state.deployment))  # fmt: skip
    for kind, status in pairs:
        out.append({"kind": kind, "name": state.names.get(kind), "namespace": state.namespace,
                    "status": status.model_dump(mode="json", by_alias=True, exclude_none=True)})  # fmt: skip
    for run in state.runs:
        out.append({"kind": "AlignmentRun", "name": run.name, "namespace": state.namespace,
                    "spec": run.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
                    "status": run.status.model_dump(mode="json", by_alias=True, exclude_none=True)})  # fmt: skip
    counts = feedback_counts(state)
    if counts is not None:
        deployment: dict[str, Any] = out[3]["status"]
        deployment["feedback"] = counts
    return out


def run_status(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        data_dir = a.data_dir.expanduser()
        file = StateFile(data_dir)
        if not file.exists():
            raise EmbeddedError(f"nothing has run with data dir {data_dir}: `contextlm up` first")
        state = file.read()
        items = resources(state)
        if a.output == "json":
            body = {"up": state.up_running(), "endpoint": state.endpoint, "items": items}
            print(json.dumps(body), flush=True)
            return 0
        running = f"running (pid {state.up_pid}) at {state.endpoint}"
        print(f"contextlm up: {running if state.up_running() else 'not running'}")
        print(f"{'KIND':<22}{'NAME':<28}PHASE")
        for item in items:
            print(f"{item['kind']:<22}{item['name'] or '':<28}{item['status'].get('phase', '')}")
        for item in items:
            print(f"\n{item['kind']}/{item['name']}:")
            fields = {k: v for k, v in item["status"].items() if k not in ("conditions", "phase")}
            for key, value in fields.items():
                print(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
            for c in item["status"].get("conditions", []):
                print(f"  {c['type']:<22}{c['status']:<8}{c['reason']:<20}{c.get('message', '')}")
        return 0

    return _guard(go, args)
