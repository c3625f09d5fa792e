"""promtool and a real Prometheus for tests: the checks every component's metrics and
the chart's rules go through.

Other tiers reuse it (tests/ is on sys.path), for example a runtime component's test:

    from chart.prometheus_tools import check_metrics
    check_metrics(scrape_text)          # raises with promtool's complaints

Both binaries come from Debian's `prometheus` package (`e2e/cluster/build apt`, or
`apt-get install -y prometheus`); a missing one fails the test with that command.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

INSTALL = "`e2e/cluster/build apt` (or `apt-get install -y prometheus`)"
# Grafana's built-in interval variables, replaced by fixed durations before PromQL is
# parsed; dashboard variables become a match-everything regex.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


class PromtoolError(AssertionError):
    """promtool rejected its input; the message carries promtool's output."""


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"`{name}` is not installed: run {INSTALL}")
    return path


def _promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise PromtoolError(f"promtool {' '.join(args)} failed ({result.returncode}):\n{output}")
    return output


def check_metrics(text: str) -> None:
    """`promtool check metrics` on an exposition (a /metrics scrape): names, suffixes,
    units and help text follow the Prometheus conventions, or this raises."""
    _promtool("check", "metrics", stdin=text)


def write_rules(groups: list[dict[str, Any]], directory: Path, name: str = "rules.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=200))
    return path


def check_rules(groups: list[dict[str, Any]]) -> str:
    """`promtool check rules` with every lint on and lint problems fatal."""
    with tempfile.TemporaryDirectory(prefix="contextlm-rules-") as tmp:
        path = write_rules(groups, Path(tmp))
        return _promtool("check", "rules", "--lint=all", "--lint-fatal", str(path))


def run_rule_tests(groups: list[dict[str, Any]], test_files: Iterable[Path]) -> str:
    """`promtool test rules`: each unit-test file names `rules.yaml` in rule_files, which
    is written next to a copy of it from `groups`."""
    with tempfile.TemporaryDirectory(prefix="contextlm-ruletest-") as tmp:
        directory = Path(tmp)
        write_rules(groups, directory)
        copies = []
        for test_file in test_files:
            copy = directory / test_file.name
            copy.write_text(test_file.read_text())
            copies.append(copy.name)
        return _promtool("test", "rules", *copies, cwd=directory)


def grafana_to_promql(expr: str) -> str:
    """A Grafana target expression as plain PromQL: interval variables become durations
    and template variables a regex matching everything."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    out, i = [], 0
    while i < len(expr):
        if expr[i] == "$":
            j = i + 1
            braced = j < len(expr) and expr[j] == "{"
            j += braced
            k = j
            while k < len(expr) and (expr[k].isalnum() or expr[k] == "_"):
                k += 1
            out.append(".*")
            i = k + (1 if braced else 0)
        else:
            out.append(expr[i])
            i += 1
    return "".join(out)


def check_expressions(exprs: Mapping[str, str]) -> None:
    """Parse each PromQL expression with promtool, through a rules file with one
    recording rule per expression (promtool has no bare expression check)."""
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    try:
        check_rules([{"name": "expressions", "rules": rules}])
    except PromtoolError as exc:
        names = "\n".join(f"  check:expr_{i} = {key}" for i, key in enumerate(exprs))
        raise PromtoolError(f"{exc}\nexpressions:\n{names}") from None


# ------------------------------------------------------------------ a real Prometheus
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Prometheus:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Poll an instant query until it returns at least one series."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no series for {promql!r} after {timeout:.0f}s; targets:\n"
                    f"{json.dumps(self.api('targets'), indent=1)[:3000]}\n"
                    f"log:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.5)


@contextlib.contextmanager
def run_prometheus(
    config: dict[str, Any], rule_groups: list[dict[str, Any]] | None = None
) -> Iterator[Prometheus]:
    """Debian's Prometheus on 127.0.0.1 with `config` (and `rule_groups` as its rules
    file), in a temporary directory, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="contextlm-prometheus-") as tmp:
        directory = Path(tmp)
        config = dict(config)
        if rule_groups is not None:
            config["rule_files"] = [str(write_rules(rule_groups, directory))]
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        _promtool("check", "config", str(config_path))
        port = _free_port()
        log = directory / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        server = Prometheus(f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"prometheus exited {proc.returncode}:\n{log.read_text()}")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp,
                ):
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"prometheus not ready after 60s:\n{log.read_text()}")
                time.sleep(0.2)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
