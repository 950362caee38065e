"""ConfigurationService: initial load, hot reload through watchdog, debounce and subscribers.

Every test uses its own agent directory and a hand-built registry with a fake
``echo`` provider and ``autonomous`` mode. Hot-reload tests poll with short
sleeps up to a 2 s deadline (the DESIGN.md promise) instead of sleeping long.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from agentrunner import config_service as config_service_module
from agentrunner.agent_loader import LoaderOptions
from agentrunner.config_service import ConfigChange, ConfigurationService
from agentrunner.plugins import Registry
from agentrunner.schema import LLMConfig

DEADLINE = 2.0  # seconds: hot reload must take effect within this (DESIGN.md)
DEBOUNCE = 0.05  # short, so the tests are fast; the burst test sets its own


class FakeEchoProvider:
    name = "echo"
    supported_options = frozenset(field.name for field in attrs.fields(LLMConfig))

    async def complete(self, request):  # pragma: no cover - never called here
        raise NotImplementedError


class FakeAutonomousMode:
    name = "autonomous"

    async def execute(self, ctx):  # pragma: no cover - never called here
        return "done"


def make_registry() -> Registry:
    return Registry(providers={"echo": FakeEchoProvider()}, execution_modes={"autonomous": FakeAutonomousMode()})


def agent_yaml(name: str, temperature: float = 0.7, prompt: str = "You help.") -> str:
    return (
        f"name: {name}\n"
        "agent_type: assistant\n"
        "execution_mode: autonomous\n"
        f"llm_config: {{provider: echo, model: echo, temperature: {temperature}}}\n"
        f"system_prompt: {prompt}\n"
    )


def write_agent(directory: Path, filename: str, name: str, **kwargs) -> Path:
    path = directory / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(agent_yaml(name, **kwargs))
    return path


async def wait_for(predicate, within: float = DEADLINE) -> None:
    """Poll ``predicate`` every 20 ms; fail when it is still false after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


class Recorder:
    """An async subscriber that keeps every change it is given."""

    def __init__(self) -> None:
        self.changes: list[ConfigChange] = []

    async def __call__(self, change: ConfigChange) -> None:
        self.changes.append(change)

    def added(self) -> set[str]:
        return {name for change in self.changes for name in change.added}

    def updated(self) -> set[str]:
        return {name for change in self.changes for name in change.updated}

    def removed(self) -> set[str]:
        return {name for change in self.changes for name in change.removed}


def temperature(service: ConfigurationService, name: str) -> float | None:
    config = service.get(name)
    return None if config is None else config.llm_config.temperature


def error_files(service: ConfigurationService) -> set[str]:
    return {Path(problem.file).name for problem in service.errors}


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "agents"
    directory.mkdir()
    return directory


@pytest.fixture
async def make_service(agents_dir: Path):
    """Build services on ``agents_dir``; each is stopped at the end and no observer thread survives."""
    threads_before = set(threading.enumerate())
    services: list[ConfigurationService] = []

    def make(**kwargs) -> ConfigurationService:
        kwargs.setdefault("debounce", DEBOUNCE)
        service = ConfigurationService(agents_dir, LoaderOptions(), make_registry(), **kwargs)
        services.append(service)
        return service

    yield make
    for service in services:
        await service.stop()
    # Watchdog's observer and emitter threads end with stop(); the default
    # executor's worker threads (asyncio.to_thread) belong to the loop, not to us.
    leaked = [
        thread
        for thread in set(threading.enumerate()) - threads_before
        if thread.is_alive() and not thread.name.startswith("asyncio_")
    ]
    assert not leaked, f"threads left running: {leaked}"


async def started(make_service, **kwargs) -> tuple[ConfigurationService, Recorder]:
    service = make_service(**kwargs)
    await service.start()
    recorder = Recorder()
    service.subscribe(recorder)
    return service, recorder


# --- Initial load -------------------------------------------------------------


def test_initial_load_keeps_good_files_and_reports_the_bad_one(agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    write_agent(agents_dir, "sales.yml", "sales")
    write_agent(agents_dir, "broken.yaml", "broken", temperature=3.5)

    service = ConfigurationService(agents_dir, LoaderOptions(), make_registry(), hot_reload=False)
    agents = service.load()

    assert set(agents) == {"support", "sales"}
    assert service.agents == agents
    assert service.get("support").name == "support"
    assert service.get("broken") is None
    assert service.files["sales"].name == "sales.yml"
    assert error_files(service) == {"broken.yaml"}
    assert "llm_config.temperature" in str(service.errors[0])


async def test_start_loads_when_load_was_not_called(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    service = make_service()
    await service.start()
    assert set(service.agents) == {"support"}
    assert service.watching


async def test_start_after_load_catches_up_with_edits_made_in_between(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.7)
    service = make_service()
    service.load()
    recorder = Recorder()
    service.subscribe(recorder)

    write_agent(agents_dir, "support.yaml", "support", temperature=0.2)
    await service.start()
    assert temperature(service, "support") == 0.2
    assert recorder.updated() == {"support"}


def test_initial_load_logs_each_agent(agents_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    write_agent(agents_dir, "broken.yaml", "broken", temperature=3.5)
    service = ConfigurationService(agents_dir, LoaderOptions(), make_registry(), hot_reload=False)
    with caplog.at_level(logging.INFO, logger="agentrunner.config"):
        service.load()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agentrunner.config"]
    assert (logging.INFO, "agent 'support' added from support.yaml") in messages
    assert any(level == logging.WARNING and "broken.yaml" in message for level, message in messages)


# --- Hot reload ---------------------------------------------------------------


async def test_added_file_is_picked_up(make_service, agents_dir: Path) -> None:
    service, recorder = await started(make_service)
    assert service.agents == {}

    write_agent(agents_dir, "support.yaml", "support")
    await wait_for(lambda: "support" in recorder.added())

    assert service.get("support") is not None
    change = next(change for change in recorder.changes if change.added)
    assert change.added["support"].name == "support"
    assert change.errors == []


async def test_edit_is_an_update(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.7)
    service, recorder = await started(make_service)

    write_agent(agents_dir, "support.yaml", "support", temperature=0.2)
    await wait_for(lambda: temperature(service, "support") == 0.2)

    assert "support" in recorder.updated()
    assert not recorder.added() and not recorder.removed()


async def test_broken_edit_keeps_last_good_version_until_fixed(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.7)
    service, recorder = await started(make_service)

    write_agent(agents_dir, "support.yaml", "support", temperature=3.5)
    await wait_for(lambda: service.errors)

    # The last good version stays; the error names the file and the field.
    assert temperature(service, "support") == 0.7
    assert error_files(service) == {"support.yaml"}
    assert "llm_config.temperature" in str(service.errors[0])
    # Subscribers hear of the error, but no agent changed.
    assert recorder.changes and recorder.changes[-1].errors
    assert not recorder.changes[-1].agents_changed

    write_agent(agents_dir, "support.yaml", "support", temperature=0.3)
    await wait_for(lambda: temperature(service, "support") == 0.3)
    assert service.errors == []
    assert recorder.changes[-1].updated.keys() == {"support"}
    assert recorder.changes[-1].errors == []


async def test_broken_yaml_syntax_keeps_last_good_version(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    service, _recorder = await started(make_service)

    (agents_dir / "support.yaml").write_text("name: support\nllm_config: [unclosed\n")
    await wait_for(lambda: service.errors)
    assert service.get("support") is not None
    assert error_files(service) == {"support.yaml"}


async def test_duplicate_name_in_a_new_file_is_an_error(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.7)
    service, recorder = await started(make_service)

    write_agent(agents_dir, "support_copy.yaml", "support", temperature=0.1)
    await wait_for(lambda: service.errors)
    assert "duplicate agent name 'support'" in str(service.errors[0])
    assert error_files(service) == {"support_copy.yaml"}
    assert temperature(service, "support") == 0.7
    assert not any(change.agents_changed for change in recorder.changes)


async def test_deleted_file_removes_its_agent(make_service, agents_dir: Path) -> None:
    path = write_agent(agents_dir, "support.yaml", "support")
    write_agent(agents_dir, "sales.yaml", "sales")
    service, recorder = await started(make_service)

    path.unlink()
    await wait_for(lambda: "support" in recorder.removed())

    assert set(service.agents) == {"sales"}
    assert recorder.changes[-1].removed["support"].name == "support"


async def test_deleting_a_broken_file_removes_the_kept_agent_and_its_error(make_service, agents_dir: Path) -> None:
    path = write_agent(agents_dir, "support.yaml", "support")
    service, _recorder = await started(make_service)
    write_agent(agents_dir, "support.yaml", "support", temperature=3.5)
    await wait_for(lambda: service.errors)

    path.unlink()
    await wait_for(lambda: service.get("support") is None)
    assert service.errors == []


async def test_atomic_save_through_a_temp_file_is_picked_up(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.7)
    service, recorder = await started(make_service)

    # What atomic-save editors do: write a hidden temp file, then rename it over the original.
    temp = write_agent(agents_dir, ".support.yaml.tmp", "support", temperature=0.4)
    os.replace(temp, agents_dir / "support.yaml")
    await wait_for(lambda: temperature(service, "support") == 0.4)
    assert recorder.updated() == {"support"}


async def test_files_moved_in_and_out(make_service, agents_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    service, recorder = await started(make_service)

    os.replace(write_agent(outside, "support.yaml", "support"), agents_dir / "support.yaml")
    await wait_for(lambda: "support" in recorder.added())

    os.replace(agents_dir / "support.yaml", outside / "support.yaml")
    await wait_for(lambda: "support" in recorder.removed())
    assert service.agents == {}


async def test_renamed_file_keeps_the_agent_as_an_update(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    service, recorder = await started(make_service)

    os.replace(agents_dir / "support.yaml", agents_dir / "helpdesk.yaml")
    await wait_for(lambda: service.files.get("support", Path()).name == "helpdesk.yaml")

    assert recorder.updated() == {"support"}
    assert not recorder.added() and not recorder.removed()


async def test_changed_agent_name_removes_old_and_adds_new(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    service, recorder = await started(make_service)

    write_agent(agents_dir, "support.yaml", "helpdesk")
    await wait_for(lambda: "helpdesk" in recorder.added())

    assert set(service.agents) == {"helpdesk"}
    assert recorder.removed() == {"support"}


async def test_subdirectories_are_watched_when_recursive(make_service, agents_dir: Path) -> None:
    service, recorder = await started(make_service, recursive=True)
    write_agent(agents_dir / "team", "support.yaml", "support")
    await wait_for(lambda: "support" in recorder.added())
    assert service.files["support"] == agents_dir / "team" / "support.yaml"


async def test_directories_moved_in_and_out(make_service, agents_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_agent(outside / "team", "support.yaml", "support")
    service, recorder = await started(make_service, recursive=True)

    os.replace(outside / "team", agents_dir / "team")
    await wait_for(lambda: "support" in recorder.added())

    os.replace(agents_dir / "team", outside / "team")
    await wait_for(lambda: "support" in recorder.removed())
    assert service.agents == {}


async def test_subdirectories_are_ignored_when_not_recursive(make_service, agents_dir: Path) -> None:
    service, recorder = await started(make_service, recursive=False)
    write_agent(agents_dir / "team", "nested.yaml", "nested")
    write_agent(agents_dir, "support.yaml", "support")
    await wait_for(lambda: "support" in recorder.added())
    assert set(service.agents) == {"support"}


async def test_burst_of_writes_is_debounced_and_the_last_one_wins(
    make_service, agents_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_agent(agents_dir, "support.yaml", "support", temperature=0.05)
    loads = []
    real_load_agents = config_service_module.load_agents

    def counting_load_agents(*args, **kwargs):
        loads.append(time.monotonic())
        return real_load_agents(*args, **kwargs)

    service, recorder = await started(make_service, debounce=0.3)
    monkeypatch.setattr(config_service_module, "load_agents", counting_load_agents)

    for step in range(1, 11):
        write_agent(agents_dir, "support.yaml", "support", temperature=step / 10)
        await asyncio.sleep(0.005)
    await wait_for(lambda: temperature(service, "support") == 1.0)
    await asyncio.sleep(0.4)  # let any trailing reload happen before counting

    assert 1 <= len(loads) <= 2
    assert temperature(service, "support") == 1.0
    assert recorder.updated() == {"support"}


async def test_irrelevant_files_trigger_no_reload(
    make_service, agents_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await started(make_service)
    loads = []
    real_load_agents = config_service_module.load_agents
    monkeypatch.setattr(
        config_service_module, "load_agents", lambda *a, **kw: loads.append(1) or real_load_agents(*a, **kw)
    )

    for name in ("notes.txt", ".hidden.yaml", ".support.yaml.swp", "support.yaml~", ".#support.yaml"):
        (agents_dir / name).write_text("junk")
    (agents_dir / ".git").mkdir()
    (agents_dir / ".git" / "config.yaml").write_text("junk")
    await asyncio.sleep(0.6 + DEBOUNCE)  # longer than watchdog's move-pairing delay plus the debounce

    assert loads == []


def test_is_agent_file(agents_dir: Path) -> None:
    service = ConfigurationService(agents_dir, LoaderOptions(), make_registry(), recursive=False)
    assert service.is_agent_file("support.yaml")
    assert service.is_agent_file(agents_dir / "support.YML")
    for name in ("notes.txt", ".support.yaml", ".support.yaml.swp", "support.yaml~", ".#support.yaml", "a/b.yaml"):
        assert not service.is_agent_file(name), name
    assert not service.is_agent_file(agents_dir.parent / "elsewhere.yaml")
    assert ConfigurationService(agents_dir, LoaderOptions(), make_registry()).is_agent_file("team/b.yaml")


async def test_change_during_a_reload_triggers_one_more_reload(
    make_service, agents_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, recorder = await started(make_service)
    entered, release = threading.Event(), threading.Event()
    real_load_agents = config_service_module.load_agents

    def slow_load_agents(*args, **kwargs):
        entered.set()
        release.wait(DEADLINE)  # holds the first reload until the second file is written
        return real_load_agents(*args, **kwargs)

    monkeypatch.setattr(config_service_module, "load_agents", slow_load_agents)
    write_agent(agents_dir, "support.yaml", "support")
    await wait_for(entered.is_set)
    write_agent(agents_dir, "sales.yaml", "sales")
    await asyncio.sleep(DEBOUNCE * 3)  # the event arrives while the first reload still runs
    release.set()

    await wait_for(lambda: {"support", "sales"} <= recorder.added())
    assert set(service.agents) == {"support", "sales"}


async def test_logs_changes_at_info_and_errors_at_warning(
    make_service, agents_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentrunner.config")
    service, recorder = await started(make_service)

    write_agent(agents_dir, "support.yaml", "support")
    await wait_for(lambda: "support" in recorder.added())
    write_agent(agents_dir, "support.yaml", "support", temperature=3.5)
    await wait_for(lambda: service.errors)

    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agentrunner.config"]
    assert (logging.INFO, "agent 'support' added from support.yaml") in messages
    assert any(level == logging.WARNING and "support.yaml: llm_config.temperature" in text for level, text in messages)


# --- Without watching, forced reload, subscribers -------------------------------


async def test_no_watching_when_hot_reload_is_off(make_service, agents_dir: Path) -> None:
    service, recorder = await started(make_service, hot_reload=False)
    assert not service.watching
    assert service._observer is None

    write_agent(agents_dir, "support.yaml", "support")
    await asyncio.sleep(0.3)
    assert service.agents == {} and recorder.changes == []

    change = await service.reload()
    assert set(change.added) == {"support"}
    assert set(service.agents) == {"support"}


async def test_forced_reload_returns_the_summary_and_notifies(make_service, agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    write_agent(agents_dir, "sales.yaml", "sales")
    service = make_service(hot_reload=False)
    service.load()
    recorder = Recorder()
    service.subscribe(recorder)

    write_agent(agents_dir, "support.yaml", "support", temperature=0.1)
    (agents_dir / "sales.yaml").unlink()
    write_agent(agents_dir, "billing.yaml", "billing")
    change = await service.reload()

    assert set(change.added) == {"billing"}
    assert set(change.updated) == {"support"}
    assert set(change.removed) == {"sales"}
    assert recorder.changes == [change]

    # Nothing changed: an empty summary, and subscribers are not bothered.
    again = await service.reload()
    assert not again.agents_changed and again.errors == []
    assert recorder.changes == [change]


async def test_failing_subscriber_does_not_stop_the_others(
    make_service, agents_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(hot_reload=False)
    service.load()
    seen_sync: list[ConfigChange] = []

    def broken(change: ConfigChange) -> None:
        raise RuntimeError("subscriber bug")

    async def broken_async(change: ConfigChange) -> None:
        raise RuntimeError("async subscriber bug")

    service.subscribe(broken)
    service.subscribe(broken_async)
    service.subscribe(seen_sync.append)
    recorder = Recorder()
    unsubscribe = service.subscribe(recorder)

    write_agent(agents_dir, "support.yaml", "support")
    with caplog.at_level(logging.ERROR, logger="agentrunner.config"):
        await service.reload()
    assert len(seen_sync) == 1 and len(recorder.changes) == 1
    assert sum("subscriber" in record.getMessage() for record in caplog.records) == 2

    unsubscribe()
    unsubscribe()  # harmless the second time
    write_agent(agents_dir, "sales.yaml", "sales")
    await service.reload()
    assert len(seen_sync) == 2 and len(recorder.changes) == 1


async def test_stop_is_idempotent_and_stops_watching(make_service, agents_dir: Path) -> None:
    service, recorder = await started(make_service)
    assert service.watching
    await service.stop()
    await service.stop()
    assert not service.watching

    write_agent(agents_dir, "support.yaml", "support")
    await asyncio.sleep(0.3)
    assert recorder.changes == []


async def test_async_context_manager(agents_dir: Path) -> None:
    write_agent(agents_dir, "support.yaml", "support")
    service = ConfigurationService(agents_dir, LoaderOptions(), make_registry(), debounce=DEBOUNCE)
    async with service:
        assert service.watching and set(service.agents) == {"support"}
    assert not service.watching


async def test_missing_directory_is_an_error_and_is_not_watched(tmp_path: Path) -> None:
    service = ConfigurationService(tmp_path / "nowhere", LoaderOptions(), make_registry())
    try:
        await service.start()
        assert not service.watching
        assert service.agents == {}
        assert "agents directory not found" in str(service.errors[0])
    finally:
        await service.stop()


def test_from_settings(tmp_path: Path) -> None:
    settings = SimpleNamespace(
        config_agents_dir=str(tmp_path),
        config_hot_reload=False,
        config_watch_recursive=False,
        config_validate_on_load=True,
    )
    service = ConfigurationService.from_settings(settings, make_registry())
    assert service.agents_dir == tmp_path
    assert service.hot_reload is False
    assert service.recursive is False
    assert isinstance(service.options, LoaderOptions)
