"""`contextlm migrate`: `alembic upgrade head` of the feedback store, programmatically.

In a cluster it runs as a Job before the gateway rolls out, with the DSN from the
Secret in $CONTEXTLM_FEEDBACK_DSN; the embedded SQLite store is upgraded by the gateway
itself when it starts. Two runs at once on PostgreSQL serialise on an advisory lock, so a
retried Job never races the first one.

    contextlm migrate                   # DSN from $CONTEXTLM_FEEDBACK_DSN
    contextlm migrate --sqlite PATH     # an SQLite file
    contextlm migrate --sql             # print the DDL instead of running it
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine

    from ..config import MigrateConfig

log = logging.getLogger("contextlm.migrate")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: "ctxlmfb" as an integer, unlikely to meet another app's key.
LOCK_KEY = 0x6374786C6D6662
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def alembic_config(output: io.StringIO | None = None, **attributes: Any) -> Config:
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes.update(attributes)
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the feedback store has no migrations"
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to `revision`; returns (revision before, revision after)."""
    from alembic import command
    from sqlalchemy import text

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        from alembic.runtime.migration import MigrationContext

        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(alembic_config(connection=conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    return before, after


def upgrade_sql(dsn: str) -> str:
    """The DDL `upgrade head` would run, for review by a DBA (alembic offline mode)."""
    from alembic import command

    from .store import engine_url

    buffer = io.StringIO()
    config = alembic_config(buffer, url=engine_url(dsn).render_as_string(hide_password=True))
    command.upgrade(config, "head", sql=True)
    return buffer.getvalue()


def wait_for(engine: Engine, seconds: float) -> None:
    """Connect within `seconds`: in a cluster the Job may start before the database."""
    from sqlalchemy import exc, text

    deadline = time.monotonic() + seconds
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except exc.OperationalError as error:
            if time.monotonic() >= deadline:
                raise
            log.info("database not reachable yet (%s); retrying", str(error).splitlines()[0])
            time.sleep(1.0)


# Process ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn-env", help="variable holding the DSN (default from the config)")
    parser.add_argument("--sqlite", metavar="PATH", help="migrate this SQLite file instead")
    parser.add_argument("--wait", type=float, help="seconds to wait for the database")
    parser.add_argument("--sql", action="store_true", help="print the DDL; change nothing")


def resolve_dsn(config: MigrateConfig, args: argparse.Namespace) -> str:
    from .store import sqlite_dsn

    if args.sqlite:
        return sqlite_dsn(args.sqlite)
    if config.backend == "sqlite":
        Path(config.sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        return sqlite_dsn(config.sqlite_path)
    name = args.dsn_env or config.dsn_env
    dsn = os.environ.get(name, "")
    if not dsn:
        raise SystemExit(f"contextlm migrate: ${name} is not set (the feedback store DSN)")
    return dsn


def run(args: argparse.Namespace) -> int:
    from sqlalchemy import exc

    from ..config import CONFIG_ENV, MigrateConfig, load_config
    from .store import create_store_engine

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    termination_log = getattr(args, "termination_log", DEFAULT_TERMINATION_LOG)
    # The config is optional: the DSN variable alone is enough.
    has_config = bool(args.config or os.environ.get(CONFIG_ENV))
    config = load_config(MigrateConfig, args.config) if has_config else MigrateConfig()
    dsn = resolve_dsn(config, args)
    if args.sql:
        print(upgrade_sql(dsn), end="")
        return 0
    engine = create_store_engine(dsn, pool_size=1)
    try:
        wait_for(engine, config.wait_s if args.wait is None else args.wait)
        before, after = upgrade(engine)
    except exc.SQLAlchemyError as error:
        log.error("migration failed: %s", error)
        reason = str(error).splitlines()[0]
        return _report({"error": type(error).__name__, "reason": reason}, termination_log, 1)
    finally:
        engine.dispose()
    return _report({"from": before, "to": after, "head": head_revision()}, termination_log, 0)


def _report(result: dict[str, Any], termination_log: str, code: int) -> int:
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    try:
        with open(termination_log, "w") as handle:
            handle.write(line + "\n")
    except OSError:
        pass  # not in a pod: stdout has it
    return code
