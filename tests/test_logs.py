"""Logs: JSON lines, files with rotation, levels per component, execution ids on every line, no secrets."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import agentrunner
from agentrunner.logs import COMPONENTS, configure_logging
from agentrunner.redaction import Redactor
from agentrunner.settings import load_settings
from agentrunner.testing.platform import http_client, running_platform
from test_cli import _serve_env

CANARY = "sk-canary-4b1d9e0f77"


@pytest.fixture
def restore_logging():
    """configure_logging changes the root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {prefix: logging.getLogger(prefix).level for prefix in COMPONENTS}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    for prefix, old in levels.items():
        logging.getLogger(prefix).setLevel(old)


def settings_for(tmp_path, **environ):
    return load_settings(environ={"SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_HOT_RELOAD": "false",
                                  "OPENAI_API_KEY": CANARY, **environ}, env_file=None)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_in_a_rotated_file_without_secrets(tmp_path, restore_logging):
    log_file = tmp_path / "agentrunner.log"
    settings = settings_for(tmp_path, LOG_FORMAT="json", LOG_OUTPUT="file", LOG_FILE_PATH=str(log_file),
                            LOG_ROTATION="size", LOG_MAX_SIZE="2000", LOG_BACKUP_COUNT="2")
    configure_logging(settings, Redactor.from_settings(settings))
    log = logging.getLogger("agentrunner.orchestrator")
    log.warning("calling the provider with key %s", CANARY)
    try:
        raise RuntimeError(f"boom {CANARY}")
    except RuntimeError:
        log.exception("it failed")
    logging.getLogger("some.library").warning(f"a library logs {CANARY} too")
    first = read_lines(log_file)
    assert [line["message"] for line in first] == [
        "calling the provider with key ***", "it failed", "a library logs *** too"]
    assert first[0]["level"] == "WARNING" and first[0]["component"] == "AgentOrchestrator"
    assert first[0]["timestamp"].endswith("Z")
    assert "RuntimeError: boom ***" in first[1]["exception"]
    assert CANARY not in log_file.read_text()
    for n in range(100):  # past LOG_MAX_SIZE: rotated, at most LOG_BACKUP_COUNT old files kept
        log.warning("line %d %s", n, "x" * 50)
    names = sorted(path.name for path in tmp_path.glob("agentrunner.log*"))
    assert names == ["agentrunner.log", "agentrunner.log.1", "agentrunner.log.2"]


def test_each_component_has_its_own_level(tmp_path, restore_logging):
    settings = settings_for(tmp_path, LOG_LEVEL="WARNING", ORCHESTRATOR_LOG_LEVEL="ERROR",
                            STATE_MANAGER_LOG_LEVEL="DEBUG")
    configure_logging(settings)
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("agentrunner.orchestrator").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("agentrunner.store.sqlite").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("agentrunner.config").getEffectiveLevel() == logging.WARNING  # from LOG_LEVEL


class Chatty:
    """A mode whose code, and a library it calls, log while the execution runs."""

    @agentrunner.hookimpl
    def register_execution_modes(self, register):
        class Mode:
            name = "chatty"

            async def execute(self, ctx):
                logging.getLogger("some.library").warning("working on %s", ctx.task.input)
                return "done"

        register(Mode())


async def test_every_line_of_an_execution_carries_its_ids(tmp_path, restore_logging):
    log_file = tmp_path / "run.log"
    settings = settings_for(tmp_path, LOG_FORMAT="json", LOG_OUTPUT="file", LOG_FILE_PATH=str(log_file))
    configure_logging(settings, Redactor.from_settings(settings))
    agent = textwrap.dedent("""\
        name: talker
        agent_type: assistant
        execution_mode: chatty
        llm_config: {temperature: 0.5}
        system_prompt: Talk.
        """)
    async with running_platform(tmp_path, {"LOG_FORMAT": "json"}, files={"talker.yaml": agent},
                                plugins=[(Chatty(), "chatty")]) as platform:
        async with http_client(platform) as client:
            response = await client.post("/agents/talker/tasks", json={"input": "the report", "wait": 5})
            execution = await response.json()
        logging.getLogger("some.library").warning("outside any execution")
    lines = read_lines(log_file)
    inside = next(line for line in lines if line["message"] == "working on the report")
    assert inside["execution_id"] == execution["execution_id"]
    assert inside["trace_id"] == execution["trace_id"] and inside["agent"] == "talker"
    outside = next(line for line in lines if line["message"] == "outside any execution")
    assert "execution_id" not in outside  # the ids do not leak into later lines


def test_serve_writes_only_json_lines_banner_included(tmp_path):
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "echoer.yaml").write_text(textwrap.dedent("""\
        name: echoer
        agent_type: assistant
        execution_mode: autonomous
        llm_config: {temperature: 0.5}
        system_prompt: Echo.
        """))
    ports = _serve_env(tmp_path)
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env.update(ports, LOG_FORMAT="json", CONFIG_HOT_RELOAD="false",
               OPENAI_API_KEY=CANARY)
    process = subprocess.Popen([sys.executable, "-m", "agentrunner", "serve", "--config", str(tmp_path)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while True:
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(json.loads(line))  # every line is one JSON object
            if lines[-1]["message"].startswith("storage:"):
                break
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    lines += [json.loads(line) for line in out.splitlines()]
    print(json.dumps(lines))  # and the run's canary scan (conftest.py) reads them too
    messages = [line["message"] for line in lines]
    assert "agentrunner 0.1.0: 1 agents loaded: echoer" in messages and messages[-1] == "stopped"
    assert CANARY not in json.dumps(lines)


async def test_a_running_platform_hides_its_secrets_from_every_handler(tmp_path):
    """A program embedding the platform keeps its own handlers (no configure_logging): while the
    platform runs, the records themselves are redacted; when it stops, nothing is changed any more."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    host = logging.getLogger("host.application")
    host.addHandler(handler)
    host.propagate = False
    host.setLevel(logging.INFO)
    factory = logging.getLogRecordFactory()
    try:
        async with running_platform(tmp_path, {"OPENAI_API_KEY": CANARY}):
            host.info("the key is %s", CANARY)
            try:
                raise RuntimeError(f"refused {CANARY}")
            except RuntimeError:
                host.exception("a failure")
        host.info("after the stop: %s", "unchanged-value")
    finally:
        host.removeHandler(handler)
        host.propagate = True
    written = stream.getvalue()
    assert "the key is ***" in written and "RuntimeError: refused ***" in written
    assert CANARY not in written
    assert "after the stop: unchanged-value" in written
    assert logging.getLogRecordFactory() is factory
