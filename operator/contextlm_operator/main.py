"""`contextlm-operator`: run the kopf operator with our settings, metrics and probes."""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

PEERING = "contextlm"
_started = threading.Event()
_namespaces: list[str] = []


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    prefix = "contextlm.io"
    settings.persistence.finalizer = f"{prefix}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    # A watch that silently stops delivering events is restarted (kopf #585, #955).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = 600
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 8
    settings.posting.level = logging.WARNING
    if _namespaces:
        # Named namespaces need no cluster-wide namespace scanning (and no permission
        # to list namespaces); kopf would otherwise retry that with 403s.
        settings.scanning.disabled = True
    _started.set()


class _Probes(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path.startswith("/healthz"):
            body, ctype, code = b"ok\n", "text/plain", 200
        elif self.path.startswith("/readyz"):
            code = 200 if _started.is_set() else 503
            body, ctype = (b"ready\n" if code == 200 else b"starting\n"), "text/plain"
        else:
            body, ctype, code = b"not found\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: Any) -> None:
        return None


def serve_probes(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Probes)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="contextlm-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--standalone", action="store_true", help="no peering (single replica)")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from . import handlers  # registers the handlers

    serve_probes(args.metrics_host, args.metrics_port or handlers.SETTINGS.metrics_port)
    _namespaces[:] = args.namespace
    clusterwide = not args.namespace
    # Naming a peering makes it mandatory in kopf, so only a peered operator names one.
    # Replicas of one peering must differ in priority, or kopf pauses all of them.
    kopf.run(
        standalone=args.standalone,
        peering_name=None if args.standalone else PEERING,
        priority=secrets.randbelow(2**31 - 2) + 1,
        clusterwide=clusterwide,
        namespaces=args.namespace,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
