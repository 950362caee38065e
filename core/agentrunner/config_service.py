"""ConfigurationService: the agent YAML files of a directory, loaded, watched and hot-reloaded.

The service owns the current set of agents. ``load()`` (or ``start()``) reads the
whole directory with the agent loader; with hot reload on, a watchdog observer
watches the directory and every burst of file-system events leads to one full
reload, off the event loop. Subscribers learn what changed through a
``ConfigChange``.

Rules of a reload (DESIGN.md, Configuration):

* the whole directory is re-validated each time, because some checks span
  files (duplicate names, collaborators);
* an agent whose file now fails keeps its last good version, and the file's
  problems show in ``errors`` until it is fixed;
* an agent whose file is gone, or no longer defines it, is removed;
* the same agent from another file (a renamed file) is an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from agentrunner.agent_loader import LoaderOptions, load_agents
from agentrunner.agent_loader import is_agent_file as is_agent_file_name

if TYPE_CHECKING:
    from agentrunner.agent_loader import AgentConfig, ConfigProblem
    from agentrunner.plugins import Registry

logger = logging.getLogger("agentrunner.config")

#: Watchdog event types that can change what the directory holds. Watchdog 7 also
#: reports ``opened``, ``closed_no_write`` and ``attrib``, which never change content.
_CONTENT_EVENTS = frozenset({"created", "modified", "deleted", "moved", "closed"})
#: Directory events that matter (a directory moved in or out carries agent files);
#: a directory's ``modified`` only echoes a change to one of its entries.
_DIRECTORY_EVENTS = frozenset({"created", "deleted", "moved"})


@attrs.define(frozen=True)
class ConfigChange:
    """What one reload changed.

    ``added`` and ``updated`` map agent names to their new configuration,
    ``removed`` to the last configuration the agent had. ``errors`` holds every
    problem the directory has after the reload (not only new ones), so a
    subscriber can show the current state without asking the service again.
    """

    added: dict[str, AgentConfig] = attrs.field(factory=dict)
    updated: dict[str, AgentConfig] = attrs.field(factory=dict)
    removed: dict[str, AgentConfig] = attrs.field(factory=dict)
    errors: list[ConfigProblem] = attrs.field(factory=list)

    @property
    def agents_changed(self) -> bool:
        """Whether any agent was added, updated or removed."""
        return bool(self.added or self.updated or self.removed)


#: A subscriber: a plain function or a coroutine function taking a ``ConfigChange``.
Subscriber = Callable[[ConfigChange], Awaitable[None] | None]


@attrs.frozen
class _Snapshot:
    """The service's state; replaced as a whole so readers never see half a reload."""

    agents: dict[str, AgentConfig] = attrs.field(factory=dict)
    files: dict[str, Path] = attrs.field(factory=dict)  # agent name → the file that defines it
    errors: list[ConfigProblem] = attrs.field(factory=list)
    warnings: list[ConfigProblem] = attrs.field(factory=list)
    kept: tuple[str, ...] = ()  # agents whose file fails and that keep their last good version
    failing: frozenset[str] = frozenset()  # normalised paths of the files with errors


class ConfigurationService:
    """The agents of a directory of YAML files, kept current while the platform runs.

    ``load()`` reads the directory synchronously (before serving);
    ``await start()`` loads it if needed and, when ``hot_reload`` is on, watches
    it; ``await stop()`` stops watching. ``agents``, ``get()``, ``errors`` and
    ``warnings`` show the current state; ``subscribe()`` registers a callback
    for every change; ``await reload()`` forces a full reload.

    Reloads run one at a time. The event-loop methods (``start``, ``stop``,
    ``reload``) must be called from one event loop; ``load()`` is meant for
    start-up, not for use while a reload may run.
    """

    def __init__(
        self,
        agents_dir: Path,
        options: LoaderOptions,
        registry: Registry,
        *,
        recursive: bool = True,
        hot_reload: bool = True,
        debounce: float = 0.3,
    ) -> None:
        self.agents_dir = agents_dir
        self.options = options
        self.registry = registry
        self.recursive = recursive
        self.hot_reload = hot_reload
        self.debounce = debounce
        # A burst that never pauses (a tool rewriting a file in a loop) must not
        # postpone the reload for ever: reload at the latest this long after its start.
        self.max_delay = max(1.0, 3 * debounce)

        self._state = _Snapshot()
        self._loaded = False
        self._subscribers: list[Subscriber] = []
        self._lock = asyncio.Lock()  # serialises reloads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._observer: Any = None  # watchdog Observer while watching
        self._watching = False
        self._timer: asyncio.TimerHandle | None = None  # the pending debounced reload
        self._burst_started: float | None = None
        self._dirty = False  # a reload was asked for and has not started yet
        self._worker: asyncio.Task[None] | None = None

    @property
    def agents_dir(self) -> Path:
        """The directory of agent files; changing it takes effect at the next load and ``start()``."""
        return self._agents_dir

    @agents_dir.setter
    def agents_dir(self, value: str | os.PathLike[str]) -> None:
        self._agents_dir = Path(value)
        self._resolved_dir = self._agents_dir.resolve()  # watchdog reports paths under this

    @classmethod
    def from_settings(cls, settings: Any, registry: Registry) -> ConfigurationService:
        """Build the service from the platform settings (``CONFIG_*`` variables)."""
        return cls(
            Path(getattr(settings, "config_agents_dir", None) or "config/agents"),
            LoaderOptions.from_settings(settings),
            registry,
            recursive=bool(getattr(settings, "config_watch_recursive", True)),
            hot_reload=bool(getattr(settings, "config_hot_reload", True)),
        )

    # --- Current state ------------------------------------------------------

    @property
    def agents(self) -> dict[str, AgentConfig]:
        """The current good version of every agent, by name (a copy)."""
        return dict(self._state.agents)

    def get(self, name: str) -> AgentConfig | None:
        """The current configuration of one agent, or None."""
        return self._state.agents.get(name)

    @property
    def files(self) -> dict[str, Path]:
        """The file each current agent was loaded from, by agent name (a copy)."""
        return dict(self._state.files)

    @property
    def errors(self) -> list[ConfigProblem]:
        """Every current problem of the directory's files (a file with one failed to load)."""
        return list(self._state.errors)

    @property
    def warnings(self) -> list[ConfigProblem]:
        """Every current warning of the directory's files (the files loaded anyway)."""
        return list(self._state.warnings)

    @property
    def watching(self) -> bool:
        """Whether the directory is being watched for changes."""
        return self._watching

    # --- Subscribers --------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` after every reload that changed something.

        The callback may be a plain function or a coroutine function; it runs on
        the event loop, after the reload (so it may call ``reload()`` itself).
        The initial load notifies nobody: read ``agents`` for the starting set.
        Returns a function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def _notify(self, change: ConfigChange) -> None:
        # A copy, because a subscriber may unsubscribe while being notified.
        for callback in list(self._subscribers):
            try:
                result = callback(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One broken subscriber must not keep the others from hearing of the change.
                logger.exception("config subscriber %r failed", callback)

    # --- Loading ------------------------------------------------------------

    def load(self) -> dict[str, AgentConfig]:
        """Load the directory now (synchronously) and return the agents.

        Meant for start-up; it notifies no subscriber. Later reloads go through
        ``reload()`` or the watcher.
        """
        self._apply(self._build())
        self._loaded = True
        return self.agents

    async def reload(self) -> ConfigChange:
        """Reload the whole directory now and return what changed.

        Subscribers are notified when something changed (agents or problems).
        """
        change, notable = await self._reload_serialised()
        if notable:
            await self._notify(change)
        return change

    async def _reload_serialised(self) -> tuple[ConfigChange, bool]:
        async with self._lock:
            # File I/O and YAML parsing run in a thread so serving is never blocked.
            snapshot = await asyncio.to_thread(self._build)
            result = self._apply(snapshot)
            self._loaded = True
            return result

    def _build(self) -> _Snapshot:
        """Load the directory and merge it with the last good versions (runs in a worker thread)."""
        result = load_agents(self.agents_dir, self.options, self.registry, recursive=self.recursive)
        previous = self._state  # stable: only _apply replaces it, and reloads are serialised
        agents = dict(result.agents)
        files = {name: Path(path) for name, path in result.files.items()}
        failing = frozenset(key for key in map(self._problem_key, result.errors) if key)
        kept = []
        for name, config in previous.agents.items():
            if name in agents:
                continue
            # A file still defines the agent but fails (the loader could read the
            # name), or the agent's file is still there but fails (even to parse):
            # keep serving the last good version. A file that is gone, or loads
            # but defines another agent, really removed the agent.
            path = result.failed.get(name)
            if path is None:
                old_path = previous.files.get(name)
                if old_path is not None and _path_key(old_path) in failing and old_path.is_file():
                    path = old_path
            if path is not None:
                agents[name] = config
                files[name] = Path(path)
                kept.append(name)
        return _Snapshot(agents, files, list(result.errors), list(result.warnings), tuple(kept), failing)

    def _apply(self, new: _Snapshot) -> tuple[ConfigChange, bool]:
        """Install a snapshot, log what changed, and say whether subscribers should hear of it."""
        old = self._state
        added = {name: config for name, config in new.agents.items() if name not in old.agents}
        removed = {name: config for name, config in old.agents.items() if name not in new.agents}
        updated = {
            name: config
            for name, config in new.agents.items()
            if name in old.agents
            and (new.files.get(name) != old.files.get(name) or not _same(old.agents[name], config))
        }
        self._state = new
        change = ConfigChange(added=added, updated=updated, removed=removed, errors=list(new.errors))

        for name in added:
            logger.info("agent %r added from %s", name, self._display(new.files.get(name)))
        for name in updated:
            old_file, new_file = old.files.get(name), new.files.get(name)
            if old_file != new_file:
                logger.info(
                    "agent %r updated from %s (was %s)", name, self._display(new_file), self._display(old_file)
                )
            else:
                logger.info("agent %r updated from %s", name, self._display(new_file))
        for name in removed:
            logger.info("agent %r removed (was defined in %s)", name, self._display(old.files.get(name)))

        # Problems are logged when they appear, not again on every reload while they last.
        old_errors = {str(problem) for problem in old.errors}
        old_warnings = {str(problem) for problem in old.warnings}
        for problem in new.errors:
            if str(problem) not in old_errors:
                logger.warning("%s", problem)
        for problem in new.warnings:
            if str(problem) not in old_warnings:
                logger.warning("%s", problem)
        for name in new.kept:
            if name not in old.kept:
                logger.warning(
                    "agent %r keeps its last good version until %s is fixed", name, self._display(new.files.get(name))
                )
        for key in sorted(old.failing - new.failing):
            logger.info("%s: no errors any more", self._display(Path(key)))

        errors_changed = sorted(old_errors) != sorted(str(problem) for problem in new.errors)
        return change, change.agents_changed or errors_changed

    def _problem_key(self, problem: ConfigProblem) -> str | None:
        """The normalised path of the file a problem belongs to (None for a problem of no file).

        Touches the file system (``resolve``): call it off the event loop.
        """
        file = getattr(problem, "file", None)
        if not file:
            return None
        path = Path(file)
        return _path_key(path if path.is_absolute() else self.agents_dir / path)

    def _display(self, path: Path | None) -> str:
        """A file as the user wrote it: relative to the agents directory when inside it."""
        if path is None:
            return "?"
        for base in (self.agents_dir, self._resolved_dir):
            with contextlib.suppress(ValueError):
                return Path(path).relative_to(base).as_posix()
        return str(path)

    # --- Watching -----------------------------------------------------------

    async def start(self) -> None:
        """Load the directory if not done yet and, with hot reload on, start watching it."""
        if self.hot_reload and not self._watching:
            self._loop = asyncio.get_running_loop()
            self._watching = True  # before the observer starts, so its first events count
            try:
                self._observer = await asyncio.to_thread(self._start_observer)
            finally:
                self._watching = self._observer is not None
            if self._watching and self._loaded:
                # Watching starts after load(): an edit made in between would
                # otherwise go unnoticed until the next one.
                await self.reload()
        if not self._loaded:
            await self._reload_serialised()

    def _start_observer(self) -> Any:
        # Imported here: watchdog is only needed when watching, and the CLI must start fast.
        from watchdog.observers import Observer

        if not self._resolved_dir.is_dir():
            logger.warning("%s is not a directory: hot reload of agent files is off", self.agents_dir)
            return None
        observer = Observer()
        observer.daemon = True  # never keep the process alive
        observer.schedule(_WatchHandler(self), str(self._resolved_dir), recursive=self.recursive)
        observer.start()
        logger.debug("watching %s for agent file changes", self._resolved_dir)
        return observer

    async def stop(self) -> None:
        """Stop watching and let a reload under way finish. Safe to call more than once."""
        self._watching = False  # drops events that are still on their way to the loop
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._burst_started = None
        self._dirty = False
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            # With _dirty cleared the worker ends after its current reload; a
            # subscriber that hangs must not hang shutdown, hence the time limit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker, timeout=5)

    async def __aenter__(self) -> ConfigurationService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_file_event(self) -> None:
        """A relevant file-system event reached the loop: (re)arm the debounce timer.

        Editors write several events per save; waiting for ``debounce`` seconds of
        quiet turns the burst into one reload.
        """
        if not self._watching or self._loop is None:
            return
        now = self._loop.time()
        if self._burst_started is None:
            self._burst_started = now
        delay = min(self.debounce, max(0.0, self._burst_started + self.max_delay - now))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._debounced)

    def _debounced(self) -> None:
        self._timer = None
        self._burst_started = None
        self._dirty = True
        # One worker at a time: a change that arrives during a reload sets _dirty
        # again, and the running worker does one more reload after the current one.
        if self._worker is None or self._worker.done():
            assert self._loop is not None
            self._worker = self._loop.create_task(self._drain(), name="agentrunner-config-reload")

    async def _drain(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.reload()
            except Exception:
                # The loader itself failed (not a bad file, which it reports as a
                # problem); keep the current agents and wait for the next change.
                logger.exception("reloading the agent files in %s failed", self.agents_dir)

    def _watched_parts(self, path: str) -> tuple[str, ...] | None:
        """The parts of a path below the agents directory, or None when the watcher ignores it.

        Ignored: paths outside the directory (a file moved out has its
        ``dest_path`` there), hidden files and directories, and, when not
        recursive, anything below a subdirectory.
        """
        try:
            parts = Path(path).relative_to(self._resolved_dir).parts
        except ValueError:
            return None
        if any(part.startswith(".") for part in parts):  # also editor locks: .#name.yaml
            return None
        if not self.recursive and len(parts) > 1:
            return None
        return parts

    def is_agent_file(self, path: str | os.PathLike[str]) -> bool:
        """Whether a path under the agents directory is an agent file the watcher reacts to.

        Only ``.yaml`` and ``.yml`` files count; hidden files and editor temp or
        backup files (``.name.swp``, ``name.yaml~``, ``.#name.yaml``) do not.
        """
        path = Path(path)
        if not path.is_absolute():
            path = self._resolved_dir / path
        parts = self._watched_parts(str(path))
        if not parts:
            return False
        # The loader's own rule, so the watcher reacts to exactly the files it loads.
        return is_agent_file_name(parts[-1])


class _WatchHandler:
    """Receives watchdog events on the observer thread and wakes the service on its loop.

    Watchdog only calls ``dispatch(event)``; filtering happens here, on the
    observer thread, so irrelevant events never reach the loop.
    """

    def __init__(self, service: ConfigurationService) -> None:
        self.service = service

    def dispatch(self, event: Any) -> None:
        if self.relevant(event):
            loop = self.service._loop
            if loop is None:
                return
            # The loop may already be closed while the observer shuts down.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.service._on_file_event)

    def relevant(self, event: Any) -> bool:
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", None):
            paths.append(os.fsdecode(event.dest_path))
        if event.is_directory:
            # A directory created, deleted or moved may bring or take agent files
            # (the agents directory itself included).
            if event.event_type not in _DIRECTORY_EVENTS:
                return False
            for path in paths:
                parts = self.service._watched_parts(path)
                if parts is not None and (self.service.recursive or not parts):
                    return True
            return False
        if event.event_type not in _CONTENT_EVENTS:
            return False
        return any(self.service.is_agent_file(path) for path in paths)


def _path_key(path: Path) -> str:
    """A path normalised for comparison (absolute, symlinks resolved)."""
    return os.path.normcase(str(Path(path).resolve()))


def _same(old: Any, new: Any) -> bool:
    """Whether two configurations are equal; one that cannot be compared counts as changed."""
    if old is new:
        return True
    try:
        return bool(old == new)
    except Exception:
        return False
