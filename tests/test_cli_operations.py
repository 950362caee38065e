"""Operations from the command line: db migrate, db maintenance, validate --connections, worker."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import textwrap
from datetime import UTC, datetime, timedelta

from agentrunner.default_plugins.sqlite_store import SQLiteStateStore
from agentrunner.records import AgentState, Execution, new_id
from agentrunner.testing.platform import running_platform
from agentrunner.worker import request_limit, run_child
from test_cli import run_cli

AGENT = textwrap.dedent("""\
    name: echoer
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {temperature: 0.5}
    system_prompt: Echo.
    """)


def test_db_migrate_creates_the_schema_once(tmp_path):
    env = {"SQLITE_PATH": str(tmp_path / "m.db")}
    first = run_cli("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["migrating the sqlite state store", "applied sqlite schema version 1",
                                         "✓ schema up to date (1 migration(s) applied)"]
    tables = {row[0] for row in sqlite3.connect(tmp_path / "m.db").execute("SELECT name FROM sqlite_master")}
    assert {"execution_history", "agent_state", "schedules"} <= tables
    again = run_cli("db", "migrate", env=env)
    assert again.returncode == 0 and again.stdout.splitlines()[-1] == "✓ schema up to date (0 migration(s) applied)"


async def test_db_maintenance_deletes_old_finished_executions_and_idle_state_only(tmp_path):
    path = tmp_path / "maint.db"
    store = SQLiteStateStore(type("S", (), {"sqlite_path": str(path)})())
    await store.start()
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=100), now - timedelta(days=5)
    rows = {
        "old-done": Execution(new_id(), "a", "autonomous", status="completed", created_at=old, started_at=old,
                              completed_at=old),
        "old-running": Execution(new_id(), "a", "autonomous", status="running", created_at=old, started_at=old),
        "old-never-started": Execution(new_id(), "a", "autonomous", status="failed", created_at=old),
        "recent-done": Execution(new_id(), "a", "autonomous", status="completed", created_at=recent,
                                 started_at=recent, completed_at=recent),
    }
    for execution in rows.values():
        await store.create_execution(execution)
    await store.put_state(AgentState(agent_name="idle", last_activity=now - timedelta(days=40)))
    await store.put_state(AgentState(agent_name="busy", last_activity=now - timedelta(days=1)))
    await store.stop()
    result = run_cli("db", "maintenance", env={"SQLITE_PATH": str(path)})
    assert result.returncode == 0, result.stderr
    assert "deleted 2 executions older than 90 days and 1 agent states idle for 30 days" in result.stdout
    assert "VACUUM and ANALYZE done" in result.stdout
    await store.start()
    try:
        kept = {name for name, execution in rows.items() if await store.get_execution(execution.execution_id)}
        assert kept == {"old-running", "recent-done"}
        assert await store.get_state("idle") is None and await store.get_state("busy") is not None
    finally:
        await store.stop()


def test_validate_connections_names_the_variables_to_check(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "echoer.yaml").write_text(AGENT)
    ok = run_cli("validate", "--config", str(tmp_path), "--connections", env={"SQLITE_PATH": str(tmp_path / "v.db")})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ state store sqlite: reachable" in ok.stdout and "✓ event bus memory: reachable" in ok.stdout
    (tmp_path / "a-directory").mkdir()
    bad = run_cli("validate", "--config", str(tmp_path), "--connections",
                  env={"SQLITE_PATH": str(tmp_path / "a-directory")})
    assert bad.returncode == 1
    line = next(line for line in bad.stdout.splitlines() if line.startswith("✗ state store sqlite"))
    assert line.endswith("(check SQLITE_PATH)")


def test_worker_refuses_the_in_memory_bus(tmp_path):
    result = run_cli("worker", env={"SQLITE_PATH": str(tmp_path / "w.db")})
    assert result.returncode == 1
    assert "agentrunner worker needs an event bus that processes share: set RABBITMQ_URL" in result.stderr


def test_the_request_limit_has_jitter_and_zero_means_never():
    rng = random.Random(7)
    limits = {request_limit(1000, 100, rng) for _ in range(200)}
    assert min(limits) >= 1000 and max(limits) <= 1100 and len(limits) > 50
    assert request_limit(0, 100) == 0 and request_limit(5, 0) == 5


async def test_a_worker_child_drains_and_exits_after_its_limit(tmp_path):
    lines = []
    async with running_platform(tmp_path, files={"echoer.yaml": AGENT}) as platform:
        submitted = [(await platform.orchestrator.submit("echoer", f"t{n}"))[0] for n in range(5)]
        code = await asyncio.wait_for(run_child(platform, 5, lines.append, lambda: lines.append("retiring")), 10)
        assert code == 0 and not platform.started
    store = SQLiteStateStore(type("S", (), {"sqlite_path": str(tmp_path / "db.sqlite")})())
    await store.start()
    try:
        for execution in submitted:  # every task it took is finished before it exits
            assert (await store.get_execution(execution.execution_id)).status == "completed"
    finally:
        await store.stop()
    assert lines[0].endswith("consuming (8 at once, replaced after 5 tasks)")
    assert lines[1].endswith("handled 5 tasks; draining to be replaced")
    assert lines[2] == "retiring"  # the supervisor is told before the drain, and starts the replacement then


def test_worker_children_start_from_a_fork_server_with_the_platform_modules_preloaded(tmp_path):
    import subprocess

    # what `agentrunner worker` does before it starts children: build the platform once (to check the
    # configuration), then list what the fork server is to import
    code = ("from agentrunner.cli import _Context, _platform\n"
            "from agentrunner.worker import _context, preload_modules\n"
            f"_platform(_Context(), {str(tmp_path)!r})\n"
            "modules = preload_modules()\n"
            "print(_context().get_start_method())\n"
            "print(' '.join(modules))\n")
    (tmp_path / "agents").mkdir()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CONFIG_HOT_RELOAD": "false"})
    assert result.returncode == 0, result.stderr
    method, modules = result.stdout.splitlines()
    modules = modules.split()
    assert method == "forkserver"
    # agentrunner itself, the default plugins and the libraries it requires; nothing of the test run
    assert {"agentrunner.orchestrator", "agentrunner.runtime", "aiohttp", "pluggy"} <= set(modules)
    assert not [name for name in modules if any(part.startswith("_") for part in name.split("."))]
    # and in this process, where pytest, hypothesis and the test modules are loaded too, only ours are chosen
    from agentrunner.worker import preload_modules

    here = preload_modules()
    assert "agentrunner.orchestrator" in here
    assert not [name for name in here if name.split(".")[0] in ("pytest", "_pytest", "hypothesis", "conftest",
                                                                "test_cli", "test_cli_operations")]


def test_the_fork_server_preloads_the_client_libraries_of_the_production_backends(tmp_path):
    import subprocess

    # building the platform opens no connection, yet it must import asyncpg, redis.asyncio and aio-pika, or
    # every recycled child imports them again (CPU each WORKER_MAX_REQUESTS tasks, while under load)
    code = ("from agentrunner.cli import _Context, _platform\n"
            "from agentrunner.worker import preload_modules\n"
            f"_platform(_Context(), {str(tmp_path)!r})\n"
            "print(' '.join(preload_modules()))\n")
    (tmp_path / "agents").mkdir()
    env = {**os.environ, "CONFIG_HOT_RELOAD": "false", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1", "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    modules = set(result.stdout.split())
    assert {"asyncpg", "redis.asyncio", "aio_pika", "agentrunner_postgres.store", "agentrunner_redis.cache",
            "agentrunner_rabbitmq.bus"} <= modules


OVERLAP_CHILD = textwrap.dedent("""\
    import os
    import sys
    import time
    from pathlib import Path

    from agentrunner.worker import RETIRING

    def child(config_dir, limit, supervisor):
        here = Path(config_dir)
        if not (here / "first").exists():  # the first child: reaches its limit, tells, then drains
            (here / "first").write_text(str(os.getpid()))
            supervisor.send(RETIRING)
            deadline = time.monotonic() + 20
            while not (here / "second").exists():  # still draining: its replacement must start meanwhile
                if time.monotonic() > deadline:
                    print("not replaced while draining", flush=True)
                    sys.exit(3)
                time.sleep(0.01)
            print(f"drained {os.getpid()} after the replacement started", flush=True)
            sys.exit(0)
        (here / "second").write_text(str(os.getpid()))
        print(f"replacement {os.getpid()} consuming", flush=True)
        while True:
            time.sleep(0.05)
    """)


def test_a_retiring_worker_child_is_replaced_while_it_drains(tmp_path):
    """The replacement of a child that reached WORKER_MAX_REQUESTS starts when the child stops taking tasks, not
    once it has exited: the consumers never run one short while it finishes what it holds."""
    import signal
    import subprocess

    (tmp_path / "overlap_child.py").write_text(OVERLAP_CHILD)
    code = textwrap.dedent(f"""\
        from types import SimpleNamespace
        from agentrunner.worker import Supervisor
        from overlap_child import child
        settings = SimpleNamespace(worker_max_requests=1, worker_max_requests_jitter=0, shutdown_grace_period=5)
        supervisor = Supervisor(settings, {str(tmp_path)!r}, 1, lambda line: print(line, flush=True), target=child)
        code = supervisor.run()
        print(f"replaced {{supervisor.replaced}}", flush=True)
        raise SystemExit(code)
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        lines = []
        def settled() -> bool:  # both children told where they are, or the old one gave up waiting
            started, drained = (any(line.startswith(word) for line in lines) for word in ("replacement", "drained"))
            return "not replaced while draining" in lines or (started and drained)

        while not settled():
            line = process.stdout.readline()
            assert line, f"the supervisor stopped: {lines} {process.stderr.read()}"
            lines.append(line.strip())
        process.send_signal(signal.SIGTERM)  # the replacement is told to stop; it never drains, so it is killed
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    lines += out.splitlines()
    first, second = (tmp_path / "first").read_text(), (tmp_path / "second").read_text()
    assert f"drained {first} after the replacement started" in lines, (lines, err)
    assert f"replacement {second} consuming" in lines and "replaced 1" in lines, (lines, err)
    assert process.returncode == 0, (lines, err)
