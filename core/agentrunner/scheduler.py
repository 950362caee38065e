"""The Scheduler: fires the schedules of agents (``schedule_config``) as tasks through the orchestrator.

A schedule defined in an agent's YAML is named after the agent and kept in the state
store's ``schedules`` table (so every process, and the SchedulerService API, sees the same
``enabled`` and ``last_execution``). One asyncio task sleeps until the earliest next fire
time; at each fire time it claims the tick in the store (``claim_schedule_tick``: one
winner per schedule and fire time, across processes) and only the winner submits the task,
with the idempotency key ``schedule:{name}:{fire time}`` as a second guard.

Rules (docs/scheduling.md tells users):

- Cron: 5 fields, Sunday=0 (and 7), in the schedule's ``timezone``. Daylight saving time
  follows Vixie cron: a job whose minute and hour fields are written without ``*`` (a
  "fixed-time" job, such as ``30 2 * * *``) fires once per wall-clock match — in the
  repeated hour of a fall-back day only the first occurrence, and a time skipped by a
  spring-forward fires once at the first valid time after the gap (03:00 for 02:30). A job
  with ``*`` in its minute or hour field (``30 * * * *``, ``*/15 * * * *``) is periodic: it
  fires at every real instant whose local time matches, so it keeps its rhythm in UTC.
- Interval: every ``interval_seconds``, on a grid that starts when the schedule first
  appeared (its ``created_at``) and continues from each fire time (``last_execution``).
- Missed ticks (the process was down, or the machine slept): of the ticks that fell due
  while nobody fired them, only the latest fires, once, if it is at most
  ``SCHEDULER_MISFIRE_GRACE`` seconds old; older ones are skipped and logged. Never a burst.
- ``enabled``: the YAML's value is stored alongside the API's choice. A change of the
  YAML's ``enabled`` wins; otherwise an enable/disable done through the API stands (across
  restarts and unchanged reloads). Enabling a schedule does not catch up ticks missed while
  it was disabled.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from agentrunner.records import Execution, Schedule, utcnow
from agentrunner.schema import AgentConfig, ScheduleConfig, as_dict

log = logging.getLogger("agentrunner.scheduler")

#: Seconds between re-reads of the schedules table, so an enable/disable done through
#: another process's API reaches this one.
REFRESH_SECONDS = 30.0
#: Seconds to wait after a pass failed (the store was down) before the next one.
ERROR_BACKOFF_SECONDS = 5.0
#: Longest daylight-saving shift taken into account (real ones are 30 minutes to 2 hours).
_DST_MARGIN = timedelta(hours=3)
#: Most cron matches looked at for one next fire time (a valid expression matches far sooner).
_MAX_CRON_STEPS = 100_000

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[Any]]


# --- Fire times (pure functions) -------------------------------------------------------------------------------


def is_fixed_time(cron: str) -> bool:
    """Whether a cron job runs at fixed wall-clock times: no ``*`` in its minute and hour fields.

    Fixed-time jobs fire once per wall-clock match across daylight-saving changes;
    the others (periodic jobs) fire at every real instant whose local time matches.
    """
    minute, hour = cron.split()[:2]
    return "*" not in minute and "*" not in hour


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant, to the second, at which ``zone``'s offset changes between ``before`` and ``after`` (UTC)."""
    target = after.astimezone(zone).utcoffset()
    lo, hi = before, after
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _instants(local: datetime, zone: ZoneInfo, fixed: bool) -> list[datetime]:
    """The UTC instants at which the naive wall-clock time ``local`` in ``zone`` fires."""
    first = local.replace(tzinfo=zone, fold=0)
    second = local.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    a, b = sorted((first.astimezone(UTC), second.astimezone(UTC)))
    if a.astimezone(zone).replace(tzinfo=None) == local:  # the time happens twice (fall back)
        return [a] if fixed else [a, b]
    # the time does not exist (spring forward): fixed-time jobs fire when the gap ends
    return [_transition(zone, a, b)] if fixed else []


def _stable(zone: ZoneInfo, instant: datetime) -> bool:
    """Whether ``zone`` keeps one UTC offset within ``_DST_MARGIN`` of ``instant``."""
    offset = instant.astimezone(zone).utcoffset()
    return all((instant + delta).astimezone(zone).utcoffset() == offset for delta in (-_DST_MARGIN, _DST_MARGIN))


def _next_cron(expression: str, timezone: str, after: datetime) -> datetime:
    from croniter import croniter  # lazily: only cron schedules need it

    zone = ZoneInfo(timezone)
    fixed = is_fixed_time(expression)
    # croniter walks naive wall-clock times (no DST arithmetic of its own, which has had bugs);
    # each match is then placed on the UTC timeline here. Near a transition a time up to the
    # length of the shift before `after` in wall-clock order can still fire after it (the second
    # pass of a repeated hour), so the walk starts earlier there.
    start = after.astimezone(zone).replace(tzinfo=None, fold=0)
    if not _stable(zone, after):
        start -= _DST_MARGIN
    matches = croniter(expression, start)
    best: datetime | None = None
    horizon: datetime | None = None
    for _ in range(_MAX_CRON_STEPS):
        local = matches.get_next(datetime)
        if horizon is not None and local > horizon:
            return best
        for instant in _instants(local, zone, fixed):
            if instant > after and (best is None or instant < best):
                best = instant
                # no later wall-clock match can fire before `best` once past this point
                horizon = best.astimezone(zone).replace(tzinfo=None)
                if not _stable(zone, best):
                    horizon += _DST_MARGIN
    if best is None:
        raise ValueError(f"cron {expression!r} has no fire time after {after.isoformat()}")
    return best


def next_fire(schedule_config: ScheduleConfig, after: datetime) -> datetime:
    """The first fire time strictly after ``after``, as an aware UTC datetime.

    Cron: the next match of the 5-field expression in the schedule's ``timezone``, with
    the daylight-saving rules of this module's docstring. Interval: ``after`` plus
    ``interval_seconds`` (``after`` being the last fire time).
    """
    if after.tzinfo is None:
        raise ValueError("next_fire needs a timezone-aware datetime")
    after = after.astimezone(UTC)
    if schedule_config.type == "interval":
        return after + timedelta(seconds=schedule_config.interval_seconds)
    return _next_cron(schedule_config.cron, schedule_config.timezone, after)


@attrs.frozen
class DueTicks:
    """What is due at one moment: the tick to fire (or None), the first missed tick skipped (or None),
    and the next tick after the moment."""

    fire: datetime | None
    first_skipped: datetime | None
    next_at: datetime


def due_ticks(schedule_config: ScheduleConfig, first_due: datetime, now: datetime, grace: float) -> DueTicks:
    """Of the ticks from ``first_due`` up to ``now``, the latest fires if it is at most ``grace``
    seconds old; every other one is skipped (so missed ticks never fire as a burst)."""
    window = now - timedelta(seconds=grace)
    if schedule_config.type == "interval":
        step = timedelta(seconds=schedule_config.interval_seconds)
        count = math.floor((now - first_due) / step)  # ticks after first_due that are due too
        latest = first_due + count * step
        if latest < window:
            return DueTicks(None, first_due, latest + step)
        return DueTicks(latest, first_due if count else None, latest + step)
    tick, first_skipped = first_due, None
    if tick < window:
        # jump over the ticks older than the grace window instead of walking them one by one
        first_skipped = tick
        tick = next_fire(schedule_config, window - timedelta(microseconds=1))
        if tick > now:
            return DueTicks(None, first_skipped, tick)
    while (following := next_fire(schedule_config, tick)) <= now:
        first_skipped = first_skipped or tick
        tick = following
    return DueTicks(tick, first_skipped, following)


def _whole_seconds(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(microsecond=0)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _timing(config: ScheduleConfig) -> tuple[Any, ...]:
    return (config.type, config.cron, config.interval_seconds, config.timezone)


# --- The scheduler -----------------------------------------------------------------------------------------------


@attrs.define
class _Entry:
    """A schedule as this process fires it."""

    agent: AgentConfig
    enabled: bool
    anchor: datetime  # the last fire time, or when the schedule appeared: the interval grid's origin
    next_at: datetime | None

    @property
    def config(self) -> ScheduleConfig:
        return self.agent.schedule_config


class Scheduler:
    """Fires the schedules of the loaded agents; see the module docstring for the rules.

    ``clock`` (returning an aware UTC datetime) and ``sleep`` (async, seconds) are the
    real ones in production; tests pass fakes to drive time without waiting.
    """

    def __init__(self, *, settings: Any, config: Any, store: Any, orchestrator: Any, clock: Clock = utcnow,
                 sleep: Sleep = asyncio.sleep, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.settings = settings
        self.config = config  # the ConfigurationService
        self.store = store
        self.orchestrator = orchestrator
        self.clock = clock
        self.sleep = sleep
        self.refresh_seconds = refresh_seconds
        self.grace = float(settings.scheduler_misfire_grace)
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._last_refresh: datetime | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Store the agents' schedules, then fire them until ``stop``; follows configuration changes."""
        if self._task is not None:
            return
        await self.sync()
        self._unsubscribe = self.config.subscribe(self._on_config_change)
        self._last_refresh = self.clock()
        self._task = asyncio.create_task(self._run(), name="agentrunner-scheduler")
        log.info("scheduler started with %d schedule(s)", len(self._entries))

    async def stop(self) -> None:
        """Stop firing (a tick being submitted completes first: the lock is taken before cancelling)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        if task is None:
            return
        async with self._lock:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        self._entries.clear()

    async def _on_config_change(self, change: Any) -> None:
        if change.agents_changed:
            await self.sync()
            self._wake.set()

    # --- YAML → store ---------------------------------------------------------------------------------------

    def scheduled_agents(self) -> dict[str, AgentConfig]:
        """The loaded agents that have a schedule, by schedule name (the agent's name)."""
        return {name: agent for name, agent in self.config.agents.items() if agent.schedule_config is not None}

    async def sync(self) -> None:
        """Make the schedules table match the agents: add, update, and delete the ones whose agent is gone."""
        async with self._lock:
            now = self.clock()
            wanted = self.scheduled_agents()
            rows = {row.schedule_name: row for row in await self.store.list_schedules()}
            for name in rows.keys() - wanted.keys():
                await self.store.delete_schedule(name)
                log.info("schedule %s deleted: its agent is gone or has no schedule_config", name)
            for name in self._entries.keys() - wanted.keys():
                del self._entries[name]
            for name, agent in sorted(wanted.items()):
                row = await self._store_schedule(agent, rows.get(name), now)
                self._track(agent, row, now)

    async def _store_schedule(self, agent: AgentConfig, row: Schedule | None, now: datetime) -> Schedule:
        """Write the agent's schedule; the stored ``enabled`` changes only when the YAML's own value does."""
        config = agent.schedule_config
        # the YAML's `enabled` is kept in the config column; the row's `enabled` is the one in force
        config_json = as_dict(config, redact=False)
        del config_json["task_data"]
        if row is None:
            row = Schedule(schedule_name=agent.name, agent_name=agent.name, schedule_type=config.type,
                           schedule_config=config_json, task_data=dict(config.task_data), enabled=config.enabled,
                           created_at=_whole_seconds(now), updated_at=now)
            await self.store.upsert_schedule(row)
            # another process may have added it first: its created_at (the interval grid's origin) stands
            row = await self.store.get_schedule(agent.name) or row
            log.info("schedule %s added (%s)", agent.name, config.cron or f"every {config.interval_seconds}s")
            return row
        enabled = config.enabled if row.schedule_config.get("enabled") != config.enabled else row.enabled
        wanted = (agent.name, config.type, config_json, dict(config.task_data), enabled)
        if (row.agent_name, row.schedule_type, row.schedule_config, row.task_data, row.enabled) == wanted:
            return row
        row = attrs.evolve(row, agent_name=agent.name, schedule_type=config.type, schedule_config=config_json,
                           task_data=dict(config.task_data), enabled=enabled, updated_at=now)
        await self.store.upsert_schedule(row)
        log.info("schedule %s updated", agent.name)
        return row

    def _track(self, agent: AgentConfig, row: Schedule, now: datetime) -> None:
        """Follow ``row`` in memory: a schedule seen for the first time resumes from its last fire
        (so a tick missed while the process was down can catch up); a schedule that was just enabled,
        or whose timing changed, starts from now."""
        name = agent.name
        old = self._entries.get(name)
        anchor = _whole_seconds(row.last_execution or row.created_at)
        entry = _Entry(agent=agent, enabled=row.enabled, anchor=anchor, next_at=None)
        if row.enabled:
            if old is None:
                entry.next_at = next_fire(entry.config, anchor)
            elif not old.enabled or _timing(old.config) != _timing(entry.config) or old.next_at is None:
                entry.next_at = self._first_after(entry, now)
            else:
                entry.anchor, entry.next_at = old.anchor, old.next_at
        self._entries[name] = entry

    @staticmethod
    def _first_after(entry: _Entry, now: datetime) -> datetime:
        """The schedule's first fire time after ``now`` (for an interval: on its grid)."""
        config = entry.config
        if config.type == "cron":
            return next_fire(config, now)
        step = timedelta(seconds=config.interval_seconds)
        count = max(1, math.floor((now - entry.anchor) / step) + 1)
        return entry.anchor + count * step

    # --- firing -----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            delay = ERROR_BACKOFF_SECONDS
            try:
                now = self.clock()
                if self._last_refresh is None or (now - self._last_refresh).total_seconds() >= self.refresh_seconds:
                    await self._refresh(now)
                    self._last_refresh = now
                await self._fire_due(now)
                delay = self._delay(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:  # the store or the bus is down: log, and try again a little later
                log.exception("scheduler pass failed; retrying in %.0f s", ERROR_BACKOFF_SECONDS)
            await self._sleep_or_wake(delay)

    def _delay(self, now: datetime) -> float:
        until_refresh = self.refresh_seconds - (now - (self._last_refresh or now)).total_seconds()
        times = [entry.next_at for entry in self._entries.values() if entry.enabled and entry.next_at is not None]
        until_fire = (min(times) - now).total_seconds() if times else until_refresh
        return max(0.0, min(until_fire, until_refresh))

    async def _sleep_or_wake(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _refresh(self, now: datetime) -> None:
        """Take up enable/disable choices made through another process's API."""
        async with self._lock:
            rows = {row.schedule_name: row for row in await self.store.list_schedules()}
            for name, entry in self._entries.items():
                row = rows.get(name)
                if row is not None and row.enabled != entry.enabled:
                    self._track(entry.agent, row, now)
                    log.info("schedule %s %s", name, "enabled" if row.enabled else "disabled")

    async def _fire_due(self, now: datetime) -> None:
        async with self._lock:
            for name, entry in list(self._entries.items()):
                if not entry.enabled or entry.next_at is None or entry.next_at > now:
                    continue
                due = due_ticks(entry.config, entry.next_at, now, self.grace)
                if due.first_skipped is not None:
                    log.warning("schedule %s: missed tick(s) from %s on skipped (older than SCHEDULER_MISFIRE_GRACE="
                                "%gs, or followed by a later one); fired instead: %s", name,
                                _iso(due.first_skipped), self.grace, _iso(due.fire) or "none")
                if due.fire is not None:
                    await self._fire(entry, due.fire)
                    entry.anchor = due.fire
                elif entry.config.type == "interval":
                    entry.anchor = due.next_at - timedelta(seconds=entry.config.interval_seconds)
                if self._entries.get(name) is entry and entry.enabled:
                    entry.next_at = due.next_at

    async def _fire(self, entry: _Entry, fire_time: datetime) -> None:
        """Claim the tick; only the process whose claim wins submits the task and records it."""
        name = entry.agent.name
        row = await self.store.get_schedule(name)
        if row is not None and not row.enabled:  # disabled through another process's API
            entry.enabled, entry.next_at = False, None
            return
        if not await self.store.claim_schedule_tick(name, fire_time):
            log.debug("schedule %s: the tick of %s was fired by another scheduler", name, fire_time.isoformat())
            return
        iso = fire_time.isoformat()
        try:
            execution, _ = await self.orchestrator.submit(
                name, dict(entry.config.task_data), data={"schedule": name, "fire_time": iso},
                idempotency_key=f"schedule:{name}:{iso}")
        except Exception:  # the tick is lost, not retried: the next one comes on time
            log.exception("schedule %s: the task of %s could not be submitted", name, iso)
            return
        log.info("schedule %s fired (tick %s): execution %s", name, iso, execution.execution_id)
        row = await self.store.get_schedule(name)
        if row is not None and (row.last_execution is None or row.last_execution < fire_time):
            await self.store.upsert_schedule(attrs.evolve(row, last_execution=fire_time, updated_at=self.clock()))

    # --- what the SchedulerService shows and does ---------------------------------------------------------

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule as the API shows it, by name."""
        rows = {row.schedule_name: row for row in await self.store.list_schedules()}
        return [self._view(agent, rows.get(name)) for name, agent in sorted(self.scheduled_agents().items())]

    async def get_schedule(self, name: str) -> dict[str, Any] | None:
        """One schedule as the API shows it, or None when no loaded agent has that schedule."""
        agent = self.scheduled_agents().get(name)
        if agent is None:
            return None
        return self._view(agent, await self.store.get_schedule(name))

    async def set_enabled(self, name: str, enabled: bool) -> dict[str, Any] | None:
        """Enable or disable a schedule (stored: it outlasts restarts and unchanged YAML); None if unknown."""
        agent = self.scheduled_agents().get(name)
        if agent is None:
            return None
        async with self._lock:
            now = self.clock()
            row = await self.store.get_schedule(name) or await self._store_schedule(agent, None, now)
            if row.enabled != enabled:
                row = attrs.evolve(row, enabled=enabled, updated_at=now)
                await self.store.upsert_schedule(row)
                log.info("schedule %s %s through the API", name, "enabled" if enabled else "disabled")
            if self.running:
                self._track(agent, row, now)
        self._wake.set()
        return self._view(agent, row)

    async def run_now(self, name: str) -> Execution | None:
        """Submit the schedule's task now (not a tick: the schedule's timing and ``last_execution``
        do not change); None if unknown."""
        agent = self.scheduled_agents().get(name)
        if agent is None:
            return None
        execution, _ = await self.orchestrator.submit(
            name, dict(agent.schedule_config.task_data),
            data={"schedule": name, "run_now": True, "requested_at": self.clock().isoformat()})
        log.info("schedule %s run now: execution %s", name, execution.execution_id)
        return execution

    def _view(self, agent: AgentConfig, row: Schedule | None) -> dict[str, Any]:
        config = agent.schedule_config
        enabled = row.enabled if row is not None else config.enabled
        view: dict[str, Any] = {"name": agent.name, "agent_name": agent.name, "type": config.type}
        if config.type == "cron":
            view["cron"] = config.cron
        else:
            view["interval_seconds"] = config.interval_seconds
        view.update({
            "timezone": config.timezone,
            "enabled": enabled,
            "next_run_at": _iso(self._next_run(agent, row)) if enabled else None,
            "last_execution": _iso(row.last_execution) if row is not None else None,
            "task_data": config.task_data,
            "timeout_seconds": config.timeout_seconds,
        })
        return view

    def _next_run(self, agent: AgentConfig, row: Schedule | None) -> datetime | None:
        entry = self._entries.get(agent.name)
        if self.running and entry is not None and entry.enabled and entry.agent is agent:
            return entry.next_at
        # not fired by this process (a `serve --service scheduler` elsewhere does): when it would fire
        now = self.clock()
        anchor = _whole_seconds(row.last_execution or row.created_at) if row is not None else _whole_seconds(now)
        return self._first_after(_Entry(agent=agent, enabled=True, anchor=anchor, next_at=None), now)
