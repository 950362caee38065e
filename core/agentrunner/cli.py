"""The ``agentrunner`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agentrunner import __version__

if TYPE_CHECKING:
    from agentrunner.streams import ExecutionStream


class _Context:
    """What the sub-commands share: settings and plugins, loaded on first use."""

    def __init__(self) -> None:
        self._settings = None

    def settings(self):
        from agentrunner.settings import SettingsError, load_settings

        if self._settings is None:
            try:
                self._settings = load_settings()
            except SettingsError as exc:
                _fail_lines(["✗ environment: " + problem for problem in exc.problems])
        return self._settings

    def plugins(self):
        from agentrunner.plugins import PluginError, Registry, make_plugin_manager

        try:
            pm = make_plugin_manager(self.settings().agentrunner_disabled_plugins)
            return pm, Registry.from_plugin_manager(pm)
        except PluginError as exc:
            _fail_lines([f"✗ plugins: {exc}"])


def _fail_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def _agents_dir(config_dir: str | None, settings) -> Path:
    return Path(config_dir) / "agents" if config_dir else Path(settings.config_agents_dir)


def _platform(obj: _Context, config_dir: str | None, slots: int | None = None):
    """Build the platform, or exit with the reason (a backend plugin missing, production checks)."""
    from agentrunner.runtime import Platform, PlatformError

    settings = obj.settings()
    problems = settings.production_problems()
    if problems:
        _fail_lines([f"✗ environment: {problem}" for problem in problems])
    pm, registry = obj.plugins()
    try:
        return Platform(settings, pm=pm, registry=registry, agents_dir=_agents_dir(config_dir, settings), slots=slots)
    except PlatformError as exc:
        _fail_lines([f"✗ {exc}"])


def _setup_logging(settings) -> None:
    """LOG_FORMAT, LOG_OUTPUT and the levels; every configured secret redacted from every line."""
    from agentrunner.logs import configure_logging
    from agentrunner.redaction import Redactor

    redactor = Redactor.from_settings(settings)
    configure_logging(settings, redactor)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="agentrunner")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """agentrunner: run agents described in YAML over HTTP, Slack, schedules and events."""
    ctx.ensure_object(_Context)


#: backend → the variables to check when it cannot be reached
_CONNECTION_VARIABLES = {
    "sqlite": "SQLITE_PATH",
    "postgres": "DATABASE_URL, or POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD, "
                "POSTGRES_SSL_MODE",
    "redis": "REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_PASSWORD, REDIS_SSL",
    "rabbitmq": "RABBITMQ_URL, or RABBITMQ_HOST, RABBITMQ_PORT, RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_VHOST, "
                "RABBITMQ_SSL",
}
#: seconds each backend gets to connect and answer its health check
CONNECTION_TIMEOUT = 10.0


async def check_connections(settings: Any, registry: Any) -> list[tuple[bool, str]]:
    """The reference's connection checklist: start each backend, run its health check (PostgreSQL
    ``SELECT 1``, Redis ``PING``, a RabbitMQ connection), stop it; one (ok, line) per backend."""
    import asyncio
    import contextlib

    from agentrunner.redaction import Redactor
    from agentrunner.runtime import PlatformError, build_backend

    redact = Redactor.from_settings(settings)
    lines: list[tuple[bool, str]] = []
    for kind, name, variable in (("state store", settings.state_backend, "STATE_BACKEND"),
                                 ("event bus", settings.event_bus_backend, "EVENT_BUS_BACKEND"),
                                 ("cache", settings.cache_backend, "CACHE_BACKEND")):
        try:
            backend = build_backend(registry, kind, name, settings, variable)
        except PlatformError as exc:
            lines.append((False, f"{kind}: {exc}"))
            continue
        try:
            await asyncio.wait_for(backend.start(), CONNECTION_TIMEOUT)
            await asyncio.wait_for(backend.health(), CONNECTION_TIMEOUT)
            lines.append((True, f"{kind} {name}: reachable"))
        except Exception as exc:  # any failure to connect is the answer to report
            reason = redact(str(exc) or type(exc).__name__)
            check = _CONNECTION_VARIABLES.get(name)
            lines.append((False, f"{kind} {name}: {reason}" + (f" (check {check})" if check else "")))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(backend.stop(), CONNECTION_TIMEOUT)
    return lines


@cli.command()
@click.option("--config", "config_dir", metavar="DIR", help="Configuration directory (agents in DIR/agents).")
@click.option("--connections", is_flag=True, help="Also connect to the state store, event bus and cache.")
@click.pass_obj
def validate(obj: _Context, config_dir: str | None, connections: bool) -> None:
    """Validate the agent files and the environment; exit 1 on any error."""
    from agentrunner.agent_loader import LoaderOptions, load_agents, validate_agent_references

    settings = obj.settings()
    _pm, registry = obj.plugins()
    directory = _agents_dir(config_dir, settings)
    errors: list[str] = []
    notes: list[str] = []
    if not directory.is_dir():
        errors.append(f"{directory}: agents directory not found (set CONFIG_AGENTS_DIR or --config)")
        agents: dict = {}
        warnings: list = []
    else:
        result = load_agents(directory, LoaderOptions.from_settings(settings), registry,
                             recursive=settings.config_watch_recursive)
        validate_agent_references(result)
        agents = result.agents
        errors += [str(problem) for problem in result.errors]
        warnings = [str(problem) for problem in result.warnings]
    errors += [f"environment: {problem}" for problem in settings.production_problems()]
    notes += [f"environment: {note}" for note in settings.no_effect_set()]
    warnings += [f"environment: {warning}" for warning in settings.production_warnings()]

    click.echo(f"✓ Loaded {len(agents)} valid agent configurations")
    if connections:
        import asyncio

        for ok, line in asyncio.run(check_connections(settings, registry)):
            if ok:
                click.echo(f"✓ {line}")
            else:
                errors.append(line)
    for line in errors:
        click.echo(f"✗ {line}")
    for line in warnings:
        click.echo(f"! {line}")
    for line in notes:
        click.echo(f"- {line}")
    if errors:
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(obj: _Context, as_json: bool) -> None:
    """List installed plugins, their versions and the hooks they implement."""
    from agentrunner.plugins import plugin_infos

    pm, registry = obj.plugins()
    infos = plugin_infos(pm)
    for info in infos:
        info["provides"] = sorted(f"{kind}:{name}" for (kind, name), owner in registry.owners.items()
                                  if owner == info["name"])
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        origin = "built in" if info["default"] else info["distribution"]
        click.echo(f"{info['name']} {info['version']} ({origin})")
        click.echo(f"  hooks: {', '.join(info['hooks']) or '-'}")
        if info["provides"]:
            click.echo(f"  provides: {', '.join(info['provides'])}")


@cli.command()
@click.option("--config", "config_dir", metavar="DIR", help="Configuration directory (agents in DIR/agents).")
@click.option("--service", "services", multiple=True, metavar="NAME",
              type=click.Choice(["state", "config", "orchestrator", "scheduler", "gateway"]),
              help="Run only this service (repeatable); all five by default.")
@click.pass_obj
def serve(obj: _Context, config_dir: str | None, services: tuple[str, ...]) -> None:
    """Run the platform: the HTTP services, the orchestrator and its workers."""

    from agentrunner import eventloop
    from agentrunner.interfaces import BusUnavailable, StoreUnavailable
    from agentrunner.runtime import PlatformError

    platform = _platform(obj, config_dir)
    _setup_logging(platform.settings)
    try:
        eventloop.run(_serve(platform, list(services) or None), platform.settings.event_loop)
    except eventloop.EventLoopUnavailable as exc:
        _fail_lines([f"✗ cannot start: {exc}"])
    except (StoreUnavailable, BusUnavailable, ConnectionError) as exc:  # a backend down at start
        _fail_lines([f"✗ cannot start: {exc}", "  (`agentrunner validate --connections` checks every backend)"])
    except PlatformError as exc:  # e.g. a TLS certificate that cannot be loaded
        _fail_lines([f"✗ cannot start: {exc}"])
    except OSError as exc:  # e.g. a port in use
        _fail_lines([f"✗ cannot start: {exc}"])


async def _serve(platform, services: list[str] | None) -> None:
    import asyncio
    import logging
    import signal

    from agentrunner import eventloop
    from agentrunner.logs import announce
    from agentrunner.web.server import start_services

    # SIGTERM drains from the first moment on, even before the banner says where the services listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consume = services is None or "orchestrator" in services
    await platform.start(consume=consume, schedule=services is None or "scheduler" in services)
    runner = await start_services(platform, services)
    eventloop.settle_gc()
    settings = platform.settings
    for warning in settings.production_warnings():
        logging.getLogger("agentrunner").warning("production: %s", warning)
    agents = sorted(platform.config.agents)
    announce(f"agentrunner {__version__}: {len(agents)} agents loaded: {', '.join(agents) or '-'}", settings)
    for problem in platform.config.errors:
        announce(f"✗ {problem}", settings)
    for name, url in runner.urls:
        announce(f"{name} listening on {url}", settings)
    announce(f"storage: {platform.store.name}, event bus: {platform.bus.name}, cache: {platform.cache.name}, "
             f"event loop: {eventloop.loop_name(settings.event_loop)}", settings)
    await stop.wait()
    grace = settings.shutdown_grace_period
    announce(f"stopping: no new tasks; waiting up to {grace:g} s for running executions", settings)
    await platform.stop(grace)
    await runner.close()
    announce("stopped", settings)


@cli.command()
@click.option("--config", "config_dir", metavar="DIR", help="Configuration directory (agents in DIR/agents).")
@click.option("--processes", type=click.IntRange(min=1), metavar="N",
              help="Consumer processes (default WORKER_PROCESSES).")
@click.pass_obj
def worker(obj: _Context, config_dir: str | None, processes: int | None) -> None:
    """Consume and run tasks only (no HTTP); run any number, on any machine, beside `serve`."""
    from agentrunner.worker import Supervisor

    settings = obj.settings()
    if settings.event_bus_backend == "memory":
        _fail_lines(["✗ agentrunner worker needs an event bus that processes share: set RABBITMQ_URL or "
                     "RABBITMQ_HOST (the in-memory bus keeps tasks inside one process; `agentrunner serve` "
                     "runs them there)"])
    _platform(obj, config_dir)  # refuses now, once, what every worker would refuse
    from agentrunner import eventloop

    try:
        eventloop.loop_factory(settings.event_loop)
    except eventloop.EventLoopUnavailable as exc:
        _fail_lines([f"✗ cannot start: {exc}"])
    _setup_logging(settings)
    supervisor = Supervisor(settings, config_dir, processes or settings.worker_processes, click.echo)
    sys.exit(supervisor.run())


@cli.group()
def db() -> None:
    """Database tasks: schema migrations and maintenance of the state store."""


def _store(obj: _Context):
    from agentrunner.runtime import PlatformError, build_backend

    settings = obj.settings()
    _pm, registry = obj.plugins()
    try:
        return build_backend(registry, "state store", settings.state_backend, settings, "STATE_BACKEND")
    except PlatformError as exc:
        _fail_lines([f"✗ {exc}"])


@db.command()
@click.pass_obj
def migrate(obj: _Context) -> None:
    """Bring the state store's schema up to date (also done when `serve` starts)."""
    import asyncio

    from agentrunner.interfaces import StoreUnavailable

    store = _store(obj)
    if not callable(getattr(store, "migrate", None)):
        click.echo(f"✓ the {store.name} state store has no schema to migrate")
        return
    click.echo(f"migrating the {store.name} state store")
    try:
        applied = asyncio.run(store.migrate(progress=click.echo))
    except StoreUnavailable as exc:
        _fail_lines([f"✗ {exc}"])
    click.echo(f"✓ schema up to date ({len(applied)} migration(s) applied)")


@db.command()
@click.option("--execution-days", type=click.FloatRange(min=0), default=90.0, show_default=True,
              help="Delete finished executions started longer ago than this.")
@click.option("--state-days", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Delete agent state idle for longer than this.")
@click.option("--vacuum/--no-vacuum", default=True, show_default=True, help="VACUUM and ANALYZE afterwards.")
@click.pass_obj
def maintenance(obj: _Context, execution_days: float, state_days: float, vacuum: bool) -> None:
    """The reference's database maintenance: archive old executions, clean idle state, vacuum."""
    import asyncio

    from agentrunner.interfaces import StoreUnavailable

    store = _store(obj)
    if not callable(getattr(store, "maintenance", None)):
        _fail_lines([f"✗ the {store.name} state store has no maintenance to run"])
    click.echo(f"maintenance of the {store.name} state store")
    try:
        counts = asyncio.run(store.maintenance(execution_days=execution_days, state_days=state_days,
                                               vacuum=vacuum, progress=click.echo))
    except StoreUnavailable as exc:
        _fail_lines([f"✗ {exc}"])
    click.echo("✓ done: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items()))


@cli.command()
@click.argument("agent")
@click.argument("input")
@click.option("--config", "config_dir", metavar="DIR", help="Configuration directory (agents in DIR/agents).")
@click.option("--data", "data", metavar="JSON", help="The task's data, a JSON object.")
@click.option("--stream", is_flag=True, help="Print the answer as the model writes it.")
@click.pass_obj
def run(obj: _Context, agent: str, input: str, config_dir: str | None, data: str | None, stream: bool) -> None:
    """Run one execution of AGENT with INPUT in-process; print its result, exit 1 on failure."""

    try:
        task_data = json.loads(data) if data else {}
    except ValueError as exc:
        _fail_lines([f"✗ --data: not valid JSON ({exc})"])
    if not isinstance(task_data, dict):
        _fail_lines(["✗ --data: must be a JSON object"])
    from agentrunner import eventloop

    platform = _platform(obj, config_dir)
    try:
        sys.exit(eventloop.run(_run(platform, agent, input, task_data, stream), platform.settings.event_loop))
    except eventloop.EventLoopUnavailable as exc:
        _fail_lines([f"✗ cannot start: {exc}"])


async def _run(platform, agent: str, input: str, data: dict, stream: bool = False) -> int:
    from agentrunner.orchestrator import AgentNotFound

    await platform.start(recover=False, watch=False)
    printed = False
    try:
        try:
            execution, _ = await platform.orchestrator.submit(agent, input, data=data, stream=stream)
        except AgentNotFound:
            known = ", ".join(sorted(platform.config.agents)) or "none"
            click.echo(f"✗ unknown agent {agent!r} (loaded: {known})", err=True)
            for problem in platform.config.errors:
                click.echo(f"✗ {problem}", err=True)
            return 1
        if stream:
            printed = await _print_stream(platform.orchestrator.streams.open(execution.execution_id))
        finished = await platform.orchestrator.wait(execution.execution_id, None)
    finally:
        await platform.stop()
    if finished.status != "completed":
        if printed:
            click.echo()
        click.echo(f"✗ execution {finished.execution_id} {finished.status}: {finished.error_message}", err=True)
        return 1
    if printed:  # the answer is on the screen already
        click.echo()
        return 0
    result = finished.result
    click.echo(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False))
    return 0


async def _print_stream(stream: ExecutionStream) -> bool:
    """Write text deltas to stdout as they come; whether any was written."""
    printed = False
    async for event, data in stream.follow():
        if event == "delta" and data["text"]:
            click.echo(data["text"], nl=False)
            sys.stdout.flush()
            printed = True
        elif event == "retry":
            if printed:
                click.echo()
            click.echo(f"↻ attempt {data['attempt']} after: {data['error']}", err=True)
            printed = False
    return printed


def _add_plugin_commands(group: click.Group) -> None:
    from agentrunner.plugins import PluginError, make_plugin_manager
    from agentrunner.settings import SettingsError, load_settings

    try:
        pm = make_plugin_manager(load_settings().agentrunner_disabled_plugins)
    except (PluginError, SettingsError):
        return  # reported by the commands that need the settings and plugins
    pm.hook.register_commands(cli=group)


def main() -> None:
    """Entry point of the ``agentrunner`` console script."""
    _add_plugin_commands(cli)
    cli(prog_name="agentrunner")
