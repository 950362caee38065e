"""The command line as a user runs it: --version, validate, plugins."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentrunner

REPO = Path(__file__).resolve().parents[1]
GOOD = """\
name: support
agent_type: assistant
execution_mode: autonomous
llm_config:
  temperature: 0.7
system_prompt: You answer support questions.
"""


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m agentrunner` as a user would, in a clean environment."""
    clean = {key: value for key, value in os.environ.items()
             if key in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "PYTHONPATH")}
    clean.update(env or {})
    if extra_path:
        clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), clean.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "agentrunner", *args], capture_output=True, text=True,
                            env=clean, cwd=cwd, timeout=60)
    _show(result.stdout, result.stderr)
    return result


def _show(*outputs: str) -> None:
    """Copy a process's output into the test's own, where the run's canary scan (conftest.py) reads it."""
    for output in outputs:
        sys.stdout.write(output or "")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory with a config/agents folder holding one good agent."""
    (tmp_path / "config" / "agents").mkdir(parents=True)
    (tmp_path / "config" / "agents" / "support.yaml").write_text(GOOD)
    return tmp_path


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"agentrunner, version {agentrunner.__version__}"


def test_validate_passes_on_the_shipped_examples(tmp_path):
    examples = sorted((REPO / "config" / "agents").glob("*.yaml"))
    assert len(examples) >= 4
    result = run_cli("validate", "--config", str(REPO / "config"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"✓ Loaded {len(examples)} valid agent configurations"
    assert "✗" not in result.stdout


def test_validate_uses_config_agents_dir_from_the_working_directory(workdir):
    result = run_cli("validate", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "✓ Loaded 1 valid agent configurations"


def test_validate_reports_each_bad_file_with_its_field_and_still_loads_the_good_ones(workdir):
    agents = workdir / "config" / "agents"
    (agents / "broken.yaml").write_text(GOOD.replace("support", "broken").replace("0.7", "3.5"))
    (agents / "nameless.yaml").write_text("agent_type: assistant\n")
    result = run_cli("validate", cwd=workdir)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "✓ Loaded 1 valid agent configurations"
    assert "✗ broken.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)" in lines
    assert any(line.startswith("✗ nameless.yaml: name:") for line in lines)


def test_validate_stops_on_a_bad_environment_value_naming_the_variable(workdir):
    result = run_cli("validate", cwd=workdir, env={"ORCHESTRATOR_PORT": "abc"})
    assert result.returncode == 1
    assert "ORCHESTRATOR_PORT" in result.stderr and "abc" in result.stderr


def test_validate_reads_dotenv_in_the_working_directory(workdir):
    (workdir / ".env").write_text("STATE_MANAGER_PORT=not-a-port\n")
    result = run_cli("validate", cwd=workdir)
    assert result.returncode == 1 and "STATE_MANAGER_PORT" in result.stderr


def test_validate_says_which_set_variables_have_no_effect(workdir):
    result = run_cli("validate", cwd=workdir, env={"CELERY_BEAT_SCHEDULE_FILENAME": "beat"})
    assert result.returncode == 0
    assert any(line.startswith("- environment: CELERY_BEAT_SCHEDULE_FILENAME") for line in result.stdout.splitlines())


def test_validate_refuses_production_without_authentication(workdir):
    result = run_cli("validate", cwd=workdir, env={"ENVIRONMENT": "production"})
    assert result.returncode == 1
    assert "API_AUTH_ENABLED" in result.stdout


def test_unknown_fields_warn_and_fail_in_strict_mode(workdir):
    (workdir / "config" / "agents" / "support.yaml").write_text(GOOD + "colour: blue\n")
    relaxed = run_cli("validate", cwd=workdir)
    assert relaxed.returncode == 0
    assert any(line.startswith("! support.yaml: colour:") for line in relaxed.stdout.splitlines())
    strict = run_cli("validate", cwd=workdir, env={"CONFIG_STRICT_MODE": "true"})
    assert strict.returncode == 1
    assert any(line.startswith("✗ support.yaml: colour:") for line in strict.stdout.splitlines())


def test_validate_names_a_missing_agents_directory(tmp_path):
    result = run_cli("validate", "--config", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 1
    assert "agents directory not found" in result.stdout


def test_plugins_json_lists_each_plugin_with_version_and_hooks():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {info["name"]: info for info in json.loads(result.stdout)}
    assert plugins["echo"]["version"] == agentrunner.__version__
    assert plugins["echo"]["hooks"] == ["register_providers"]
    assert plugins["echo"]["provides"] == ["provider:echo"]
    assert plugins["modes"]["provides"] == ["execution mode:autonomous", "execution mode:collaborative",
                                            "execution mode:continuous", "execution mode:scheduled"]


def test_plugins_text_output():
    result = run_cli("plugins")
    assert result.returncode == 0
    assert "echo " + agentrunner.__version__ + " (built in)" in result.stdout
    assert "  provides: tool type:function" in result.stdout


def test_a_disabled_plugin_disappears_and_agents_needing_it_fail_validation(workdir):
    env = {"AGENTRUNNER_DISABLED_PLUGINS": "echo"}
    listed = json.loads(run_cli("plugins", "--json", env=env).stdout)
    assert "echo" not in {info["name"] for info in listed}
    result = run_cli("validate", cwd=workdir, env=env)
    assert result.returncode == 1
    assert "llm_config.provider" in result.stdout and "unknown provider 'echo'" in result.stdout


def test_plugin_commands_are_added_through_register_commands(tmp_path):
    (tmp_path / "agentrunner_hello.py").write_text(textwrap.dedent("""
        import click
        import agentrunner

        @agentrunner.hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from a plugin")
    """))
    info = tmp_path / "agentrunner_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: agentrunner-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[agentrunner]\nhello = agentrunner_hello\n")
    result = run_cli("hello", extra_path=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from a plugin\n"


def test_the_console_script_is_installed():
    assert shutil.which("agentrunner") or (Path(sys.executable).parent / "agentrunner").exists()


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _serve_env(workdir: Path) -> dict[str, str]:
    names = ("STATE_MANAGER_PORT", "CONFIG_SERVICE_PORT", "ORCHESTRATOR_PORT", "SCHEDULER_SERVICE_PORT",
             "SLACK_GATEWAY_PORT")
    return {**dict(zip(names, map(str, _free_ports(5)), strict=True)), "SQLITE_PATH": str(workdir / "db.sqlite")}


def test_run_prints_the_result_and_fails_with_exit_1(workdir):
    result = run_cli("run", "support", "hello from the command line", cwd=workdir,
                     env={"SQLITE_PATH": str(workdir / "db.sqlite")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the command line\n"
    unknown = run_cli("run", "nobody", "x", cwd=workdir, env={"SQLITE_PATH": str(workdir / "db.sqlite")})
    assert unknown.returncode == 1 and "unknown agent 'nobody' (loaded: support)" in unknown.stderr


def test_run_on_the_standard_asyncio_loop_and_a_clear_error_for_an_unknown_loop(workdir):
    env = {"SQLITE_PATH": str(workdir / "db.sqlite")}
    plain = run_cli("run", "support", "on asyncio", cwd=workdir, env={**env, "EVENT_LOOP": "asyncio"})
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "on asyncio\n"
    wrong = run_cli("run", "support", "x", cwd=workdir, env={**env, "EVENT_LOOP": "trio"})
    assert wrong.returncode != 0
    assert "EVENT_LOOP" in wrong.stderr and "'trio'" in wrong.stderr


def test_serve_prints_where_it_listens_and_drains_on_sigterm(workdir):
    import signal
    import urllib.request

    env = _serve_env(workdir)
    clean = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    process = subprocess.Popen([sys.executable, "-m", "agentrunner", "serve"], cwd=workdir, env={**clean, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while len(lines) < 20:
            line = process.stdout.readline()
            if not line:
                break
            if re.match(r"\d{4}-\d\d-\d\d \d\d:", line):
                continue  # a log line (LOG_OUTPUT=stdout), not the banner
            lines.append(line.rstrip("\n"))
            if line.startswith("storage:"):
                break
        assert lines[0] == "agentrunner 0.1.0: 1 agents loaded: support"
        assert f"AgentOrchestrator listening on http://127.0.0.1:{env['ORCHESTRATOR_PORT']}" in lines
        assert f"StateManager listening on http://127.0.0.1:{env['STATE_MANAGER_PORT']}" in lines
        # uvloop is a dependency of the core wherever it builds (EVENT_LOOP=auto picks it)
        assert lines[-1] == "storage: sqlite, event bus: memory, cache: memory, event loop: uvloop"
        url = f"http://127.0.0.1:{env['ORCHESTRATOR_PORT']}/agents/support/tasks"
        ids = []
        for number in range(20):
            request = urllib.request.Request(url, data=json.dumps({"input": f"task {number}"}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                ids.append(json.loads(response.read())["execution_id"])
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        _show("\n".join(lines), out, err)
        assert process.returncode == 0, err
        assert "stopped" in out
    finally:
        if process.poll() is None:
            process.kill()
    # nothing lost, nothing left running: every execution is recorded, finished or queued for the next start
    import sqlite3

    rows = dict(sqlite3.connect(workdir / "db.sqlite").execute("SELECT execution_id, status FROM execution_history"))
    assert set(ids) <= set(rows)
    assert "running" not in rows.values()


def test_a_backend_whose_plugin_is_missing_names_the_distribution(workdir):
    # (disabled, as if not installed: the plugin may well be installed where the tests run)
    result = run_cli("run", "support", "x", cwd=workdir,
                     env={"POSTGRES_HOST": "db.example.com", "AGENTRUNNER_DISABLED_PLUGINS": "postgres"})
    assert result.returncode == 1
    assert "STATE_BACKEND: unknown state store 'postgres'" in result.stderr
    assert "pip install agentrunner-postgres" in result.stderr


def test_serve_refuses_production_without_authentication(workdir):
    result = run_cli("serve", cwd=workdir, env={"ENVIRONMENT": "production"})
    assert result.returncode == 1 and "API_AUTH_ENABLED" in result.stderr
