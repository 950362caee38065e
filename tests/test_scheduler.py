"""The Scheduler and the SchedulerService: cron and interval fire times (DST days included), missed ticks,
several schedulers on one database, enable/disable, hot reload, and the HTTP endpoints.

Time is driven by ``FakeClock`` (the scheduler's ``clock`` and ``sleep``), so a day of schedule
runs in milliseconds; one test uses the real clock end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentrunner.plugins import make_plugin_manager
from agentrunner.runtime import Platform
from agentrunner.scheduler import Scheduler, due_ticks, is_fixed_time, next_fire
from agentrunner.schema import ScheduleConfig
from agentrunner.settings import load_settings
from agentrunner.web import scheduler as scheduler_service

T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
API_KEY = "s" * 40
SECRET = "canary-4e1d-schedule-secret"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expression: str, timezone: str = "UTC") -> ScheduleConfig:
    return ScheduleConfig(type="cron", cron=expression, timezone=timezone)


def fires(config: ScheduleConfig, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end), by repeated ``next_fire``."""
    out = []
    while (start := next_fire(config, start)) < end:
        out.append(start)
    return out


def hm(instants: list[datetime]) -> list[str]:
    return [instant.strftime("%m-%d %H:%M") for instant in instants]


# --- next_fire: cron fields ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 9 * * 0", utc(2024, 1, 7, 9)),       # Sunday is 0
    ("0 9 * * 7", utc(2024, 1, 7, 9)),       # ... and 7
    ("0 9 * * sun", utc(2024, 1, 7, 9)),
    ("0 9 * * 1", utc(2024, 1, 8, 9)),       # Monday is 1 (not Tuesday, as APScheduler's from_crontab has it)
    ("0 9 * * mon", utc(2024, 1, 8, 9)),
    ("0 9 * * 6", utc(2024, 1, 6, 9)),       # Saturday
    ("0 9 * * 1-5", utc(2024, 1, 4, 9)),     # the next weekday: Thursday
    ("0 9 * * 0,6", utc(2024, 1, 6, 9)),
    ("30 8 * * *", utc(2024, 1, 4, 8, 30)),
    ("0 0 1 * *", utc(2024, 2, 1)),
    ("0 9 15 * 1", utc(2024, 1, 8, 9)),     # day of month and day of week both set: either one (cron's OR)
    ("15 10 * * *", utc(2024, 1, 3, 10, 15)),  # later the same day
])
def test_cron_fields_and_day_of_week_numbering(expression, expected):
    wednesday = utc(2024, 1, 3, 10)
    assert wednesday.weekday() == 2
    assert next_fire(cron(expression), wednesday) == expected


def test_next_fire_is_strictly_after_and_in_utc():
    config = cron("0 9 * * *", "Asia/Tokyo")  # 09:00 in Tokyo is 00:00 UTC
    first = next_fire(config, utc(2024, 1, 1, 0))
    assert first == utc(2024, 1, 2, 0) and first.tzinfo is UTC
    assert next_fire(config, utc(2024, 1, 1, 0) - timedelta(microseconds=1)) == utc(2024, 1, 1, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(config, datetime(2024, 1, 1))


def test_interval_fire_times_follow_the_last_fire():
    config = ScheduleConfig(type="interval", interval_seconds=90)
    assert next_fire(config, T0) == T0 + timedelta(seconds=90)
    assert fires(config, T0, T0 + timedelta(minutes=5)) == [T0 + timedelta(seconds=s) for s in (90, 180, 270)]


def test_fixed_time_jobs_are_those_without_a_star_in_minute_and_hour():
    assert is_fixed_time("30 2 * * *") and is_fixed_time("0,30 1-3 * * 1")
    assert not is_fixed_time("30 * * * *") and not is_fixed_time("*/15 2 * * *")


# --- next_fire: daylight saving time ------------------------------------------------------------------------------

#: The 2024 transitions: (zone, spring-forward day, fall-back day).
TRANSITIONS = [("America/New_York", (2024, 3, 10), (2024, 11, 3)), ("Europe/Paris", (2024, 3, 31), (2024, 10, 27))]


@pytest.mark.parametrize(("zone", "spring", "fall"), TRANSITIONS)
def test_a_daily_0230_job_fires_exactly_once_on_both_transition_days(zone, spring, fall):
    config = cron("30 2 * * *", zone)
    tz = ZoneInfo(zone)
    for day in (spring, fall):
        start = datetime(*day, tzinfo=tz) - timedelta(days=2)
        instants = fires(config, start, start + timedelta(days=5))
        local_days = [instant.astimezone(tz).date() for instant in instants]
        assert len(instants) == 5 and len(set(local_days)) == 5, hm(instants)  # one a day, every day
        on_the_day = [instant for instant in instants if instant.astimezone(tz).date() == datetime(*day).date()]
        assert len(on_the_day) == 1


#: Exact UTC instants on transition days, enumerated from 22:00 UTC the day before, for 10 hours.
DST_CASES = {
    # New York, spring forward (02:00 EST → 03:00 EDT at 07:00 UTC): 02:30 does not exist → 03:00 EDT = 07:00 UTC
    ("America/New_York", "spring", "30 2 * * *"): ["03-10 07:00"],
    # hourly at :30: 01:30 EST (06:30 UTC), then 03:30 EDT (07:30 UTC): one hour apart, nothing doubled
    ("America/New_York", "spring", "30 * * * *"): [
        "03-09 22:30", "03-09 23:30", "03-10 00:30", "03-10 01:30", "03-10 02:30", "03-10 03:30", "03-10 04:30",
        "03-10 05:30", "03-10 06:30", "03-10 07:30"],
    # fall back (02:00 EDT → 01:00 EST at 06:00 UTC): 02:30 happens once (EST), 07:30 UTC
    ("America/New_York", "fall", "30 2 * * *"): ["11-03 07:30"],
    # hourly: 01:30 EDT (05:30 UTC) and 01:30 EST (06:30 UTC) are both real hours
    ("America/New_York", "fall", "30 * * * *"): [
        "11-02 22:30", "11-02 23:30", "11-03 00:30", "11-03 01:30", "11-03 02:30", "11-03 03:30", "11-03 04:30",
        "11-03 05:30", "11-03 06:30", "11-03 07:30"],
    # Paris, spring forward (02:00 CET → 03:00 CEST at 01:00 UTC): 02:30 → 03:00 CEST = 01:00 UTC
    ("Europe/Paris", "spring", "30 2 * * *"): ["03-31 01:00"],
    ("Europe/Paris", "spring", "30 * * * *"): [
        "03-30 22:30", "03-30 23:30", "03-31 00:30", "03-31 01:30", "03-31 02:30", "03-31 03:30", "03-31 04:30",
        "03-31 05:30", "03-31 06:30", "03-31 07:30"],
    # fall back (03:00 CEST → 02:00 CET at 01:00 UTC): 02:30 happens twice; only the first, 00:30 UTC
    ("Europe/Paris", "fall", "30 2 * * *"): ["10-27 00:30"],
    ("Europe/Paris", "fall", "30 * * * *"): [
        "10-26 22:30", "10-26 23:30", "10-27 00:30", "10-27 01:30", "10-27 02:30", "10-27 03:30", "10-27 04:30",
        "10-27 05:30", "10-27 06:30", "10-27 07:30"],
}


@pytest.mark.parametrize(("zone", "which", "expression"), list(DST_CASES))
def test_exact_utc_instants_on_transition_days(zone, which, expression):
    spring, fall = dict((z, (s, f)) for z, s, f in TRANSITIONS)[zone]
    day = datetime(*(spring if which == "spring" else fall), tzinfo=UTC)
    start = day - timedelta(hours=2)
    assert hm(fires(cron(expression, zone), start - timedelta(microseconds=1), start + timedelta(hours=10))) \
        == DST_CASES[zone, which, expression]


@pytest.mark.parametrize(("zone", "spring", "fall"), TRANSITIONS)
@pytest.mark.parametrize("day", ["spring", "fall"])
def test_every_15_minutes_keeps_its_rhythm_in_utc_across_the_change(zone, spring, fall, day):
    start = datetime(*(spring if day == "spring" else fall), tzinfo=UTC) - timedelta(hours=4)
    instants = fires(cron("*/15 * * * *", zone), start, start + timedelta(hours=12))
    assert instants == [start + timedelta(minutes=15 * k) for k in range(1, 48)]


# A reference built the slow way: every UTC minute of the days around each 2024 transition, placed on the
# wall clock; fixed-time jobs fire on the first occurrence of a time and at the end of a gap that swallowed
# one, periodic jobs at every real minute whose wall-clock time matches.

REFERENCE_ZONES = ["America/New_York", "Europe/Paris", "Australia/Sydney", "Australia/Lord_Howe", "America/Santiago"]
REFERENCE_PATTERNS = ["30 2 * * *", "30 * * * *", "*/15 * * * *", "0 0 * * *", "0,30 1-3 * * *", "45 1 * * 0",
                      "*/10 2 * * *", "0 */2 * * *", "15 2,3 * * *"]


def _transitions(zone: ZoneInfo) -> list[datetime]:
    out, hour = [], utc(2024, 1, 1)
    while hour.year == 2024:
        following = hour + timedelta(hours=1)
        if hour.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            out.append(hour)
        hour = following
    return out


def _reference(expression: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    from croniter import croniter

    first_local = (start - timedelta(hours=3)).astimezone(zone).replace(tzinfo=None)
    matches, walk = set(), croniter(expression, first_local - timedelta(minutes=1))
    while (local := walk.get_next(datetime)) <= end.astimezone(zone).replace(tzinfo=None) + timedelta(hours=3):
        matches.add(local)
    fixed = is_fixed_time(expression)
    out, minute = [], start
    while minute < end:
        here = minute.astimezone(zone)
        local = here.replace(tzinfo=None, fold=0)
        before = (minute - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None, fold=0)
        swallowed = any(before + timedelta(minutes=k) in matches for k in range(1, int((local - before).seconds // 60)))
        if fixed:
            if (local in matches and here.fold == 0) or (local - before > timedelta(minutes=1) and swallowed):
                out.append(minute)
        elif local in matches:
            out.append(minute)
        minute += timedelta(minutes=1)
    return out


@pytest.mark.parametrize("zone_name", REFERENCE_ZONES)
def test_next_fire_agrees_with_a_minute_by_minute_reference_around_every_transition(zone_name):
    zone = ZoneInfo(zone_name)
    transitions = _transitions(zone)
    assert len(transitions) == 2
    for transition in transitions:
        start, end = transition - timedelta(hours=14), transition + timedelta(hours=14)
        for expression in REFERENCE_PATTERNS:
            expected = _reference(expression, zone, start, end)
            assert hm(fires(cron(expression, zone_name), start - timedelta(microseconds=1), end)) == hm(expected), \
                (zone_name, transition, expression)


# --- due_ticks: missed ticks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ScheduleConfig(type="interval", interval_seconds=60), cron("* * * * *")])
def test_missed_ticks_collapse_into_the_latest_one_within_the_grace(config):
    first = T0 + timedelta(minutes=1)
    # nothing missed: the tick itself
    due = due_ticks(config, first, first, 300)
    assert (due.fire, due.first_skipped, due.next_at) == (first, None, first + timedelta(minutes=1))
    # two ticks missed (12:01 and 12:02), now 12:02:10: only 12:02 fires
    due = due_ticks(config, first, first + timedelta(seconds=70), 300)
    assert (due.fire, due.first_skipped, due.next_at) == (first + timedelta(minutes=1), first,
                                                          first + timedelta(minutes=2))
    # a long outage: the latest tick (13:00) is 30 s old, within 60 s of grace
    due = due_ticks(config, first, utc(2024, 1, 1, 13, 0, 30), 60)
    assert (due.fire, due.first_skipped, due.next_at) == (utc(2024, 1, 1, 13), first, utc(2024, 1, 1, 13, 1))
    # the latest tick is older than the grace: nothing fires
    due = due_ticks(config, first, utc(2024, 1, 1, 13, 0, 30), 10)
    assert (due.fire, due.first_skipped, due.next_at) == (None, first, utc(2024, 1, 1, 13, 1))


# --- A fake clock and real platforms ----------------------------------------------------------------------------


class FakeClock:
    """The scheduler's ``clock`` and ``sleep``: time moves only when the test says, sleepers wake at their time.

    ``loops`` is how many schedulers sleep on this clock (``scheduled`` counts them); ``advance`` waits for
    each woken one to go back to sleep.
    """

    def __init__(self, now: datetime) -> None:
        self.current = now
        self.loops = 0
        self.sleeps = 0
        self._sleepers: list[tuple[datetime, asyncio.Future]] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        item = (self.current + timedelta(seconds=seconds), asyncio.get_running_loop().create_future())
        self._sleepers.append(item)
        self.sleeps += 1
        try:
            await item[1]
        finally:
            self._sleepers.remove(item)

    def _pending(self) -> list[tuple[datetime, asyncio.Future]]:
        return [item for item in self._sleepers if not item[1].done()]

    async def settle(self, sleeps: int = 0) -> None:
        """Wait until ``sleeps`` sleep calls were made and every scheduler sleeps."""
        deadline = asyncio.get_running_loop().time() + 5
        while self.sleeps < sleeps or len(self._pending()) < self.loops:
            assert asyncio.get_running_loop().time() < deadline, "a scheduler did not go back to sleep"
            await asyncio.sleep(0.001)

    async def after(self, action) -> object:
        """Run the awaitable ``action`` (which wakes one scheduler) and wait for that scheduler to sleep again."""
        sleeps = self.sleeps
        result = await action
        await self.settle(sleeps + 1)
        return result

    async def advance(self, seconds: float = 0, *, to: datetime | None = None) -> None:
        end = to or self.current + timedelta(seconds=seconds)
        await self.settle()
        while due := [item for item in self._pending() if item[0] <= end]:
            self.current = max(self.current, min(when for when, _ in due))
            woken = [future for when, future in due if when <= self.current]
            expected = self.sleeps + len(woken)
            for future in woken:
                future.set_result(None)
            await self.settle(expected)
        self.current = end


def agent(name: str, schedule: str, task_data: str = "{}") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        agent_type: assistant
        execution_mode: scheduled
        llm_config:
          temperature: 0.2
        system_prompt: Scheduled test agent.
        schedule_config:
        """) + textwrap.indent(textwrap.dedent(schedule), "  ") + f"  task_data: {task_data}\n"


EVERY_MINUTE = "type: interval\ninterval_seconds: 60\n"


@contextlib.asynccontextmanager
async def scheduled(tmp_path: Path, clock: FakeClock | None, files: dict[str, str] | None = None, *,
                    environ: dict[str, str] | None = None, consume: bool = False) -> AsyncIterator[Platform]:
    """A Platform on ``tmp_path/db.sqlite`` with its agents in ``tmp_path/agents``, its scheduler on ``clock``."""
    agents = tmp_path / "agents"
    agents.mkdir(exist_ok=True)
    for name, text in (files or {}).items():
        (agents / name).write_text(text)
    settings = load_settings(environ={"SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_AGENTS_DIR": str(agents),
                                      "CONFIG_HOT_RELOAD": "false", **(environ or {})}, env_file=None)
    platform = Platform(settings, pm=make_plugin_manager(load_entry_points=False))
    if clock is not None:
        platform.scheduler = Scheduler(settings=settings, config=platform.config, store=platform.store,
                                       orchestrator=platform.orchestrator, clock=clock.now, sleep=clock.sleep,
                                       refresh_seconds=24 * 3600)
    await platform.start(consume=consume, schedule=True)
    try:
        if clock is not None:
            clock.loops += 1
            await clock.settle()
        yield platform
    finally:
        await platform.stop(grace=1)
        if clock is not None:
            clock.loops -= 1


async def fired(platform: Platform, name: str) -> list[datetime]:
    """The fire times of the ticks submitted for ``name`` (manual runs left out), oldest first."""
    executions, _ = await platform.store.list_executions(agent_name=name, limit=500)
    return sorted(datetime.fromisoformat(e.data["fire_time"]) for e in executions if "fire_time" in e.data)


def minutes(*values: float) -> list[datetime]:
    return [T0 + timedelta(minutes=value) for value in values]


# --- The scheduler --------------------------------------------------------------------------------------------------


async def test_an_interval_schedule_fires_every_interval_from_its_first_appearance(tmp_path):
    clock = FakeClock(T0)
    async with scheduled(tmp_path, clock, {"r.yaml": agent("reporter", EVERY_MINUTE, '{"report": "sales"}')}) as p:
        await clock.advance(59)
        assert await fired(p, "reporter") == []
        await clock.advance(1)
        assert await fired(p, "reporter") == minutes(1)
        await clock.advance(180)
        assert await fired(p, "reporter") == minutes(1, 2, 3, 4)
        executions, _ = await p.store.list_executions(agent_name="reporter")
        newest = executions[0]
        iso = minutes(4)[0].isoformat()
        assert newest.input == {"report": "sales"} and newest.task_type == "scheduled"
        assert newest.data == {"schedule": "reporter", "fire_time": iso}
        assert newest.idempotency_key == f"schedule:reporter:{iso}"
        row = await p.store.get_schedule("reporter")
        assert row.last_execution == minutes(4)[0] and row.schedule_type == "interval" and row.enabled
        view = await p.scheduler.get_schedule("reporter")
        assert view["next_run_at"] == minutes(5)[0].isoformat()
        assert view["last_execution"] == iso


@pytest.mark.parametrize("schedule", [EVERY_MINUTE, "type: cron\ncron: '* * * * *'\n"])
@pytest.mark.parametrize(("grace", "after_outage"), [(300, [3]), (5, [])])
async def test_an_outage_of_two_ticks_fires_at_most_once_on_restart(tmp_path, caplog, schedule, grace, after_outage):
    caplog.set_level(logging.WARNING, logger="agentrunner.scheduler")
    clock = FakeClock(T0)
    files = {"r.yaml": agent("reporter", schedule)}
    environ = {"SCHEDULER_MISFIRE_GRACE": str(grace)}
    async with scheduled(tmp_path, clock, files, environ=environ) as p:
        await clock.advance(60)
        assert await fired(p, "reporter") == minutes(1)
    # down from 12:01 to 12:03:10: the ticks of 12:02 and 12:03 are missed
    await clock.advance(to=T0 + timedelta(minutes=3, seconds=10))
    async with scheduled(tmp_path, clock, environ=environ) as p:
        assert await fired(p, "reporter") == minutes(1, *after_outage)  # the latest, once, if within the grace
        assert "missed tick(s) from 2024-01-01T12:02:00+00:00" in caplog.text
        await clock.advance(50)  # 12:04: back on time
        assert await fired(p, "reporter") == minutes(1, *after_outage, 4)


async def test_two_schedulers_on_one_database_fire_each_tick_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="agentrunner.scheduler")
    clock = FakeClock(T0)
    files = {"a.yaml": agent("every-minute", EVERY_MINUTE),
             "b.yaml": agent("every-two", "type: cron\ncron: '*/2 * * * *'\n")}
    async with scheduled(tmp_path, clock, files) as first, scheduled(tmp_path, clock) as second:
        await clock.advance(600)
        assert await fired(first, "every-minute") == minutes(*range(1, 11))
        assert await fired(second, "every-two") == minutes(2, 4, 6, 8, 10)
        executions, _ = await first.store.list_executions(limit=500)
        keys = [execution.idempotency_key for execution in executions]
        assert len(keys) == 15 == len(set(keys))
        # both were woken for every tick and raced for it: the loser of each claim stood down
        assert caplog.text.count("was fired by another scheduler") == 15
        assert (await second.scheduler.get_schedule("every-minute"))["last_execution"] == minutes(10)[0].isoformat()


async def test_concurrent_claims_of_one_tick_have_one_winner(tmp_path):
    async with scheduled(tmp_path, FakeClock(T0), {"r.yaml": agent("reporter", EVERY_MINUTE)}) as p:
        results = await asyncio.gather(*(p.store.claim_schedule_tick("reporter", T0) for _ in range(8)))
        assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize(("zone", "spring", "fall"), TRANSITIONS)
async def test_a_daily_0230_job_fires_once_a_day_through_the_scheduler_across_both_changes(tmp_path, zone,
                                                                                         spring, fall):
    tz = ZoneInfo(zone)
    files = {"n.yaml": agent("nightly", f"type: cron\ncron: '30 2 * * *'\ntimezone: {zone}\n")}
    for name, day in (("spring", spring), ("fall", fall)):
        start = datetime(*day, tzinfo=tz) - timedelta(days=1)
        clock = FakeClock(start.astimezone(UTC))
        (tmp_path / name).mkdir()
        async with scheduled(tmp_path / name, clock, files) as p:
            await clock.advance(3 * 24 * 3600)
            instants = await fired(p, "nightly")
        assert [instant.astimezone(tz).date() for instant in instants] == \
            [(start + timedelta(days=k)).date() for k in range(3)]  # the day before, the day, the day after
        on_the_day = instants[1].astimezone(tz)
        assert on_the_day.date() == datetime(*day).date()
        assert on_the_day.strftime("%H:%M") == ("03:00" if name == "spring" else "02:30")


async def test_a_schedule_disabled_in_yaml_never_ticks(tmp_path):
    clock = FakeClock(T0)
    async with scheduled(tmp_path, clock, {"r.yaml": agent("reporter", EVERY_MINUTE + "enabled: false\n")}) as p:
        await clock.advance(600)
        assert await fired(p, "reporter") == []
        view = await p.scheduler.get_schedule("reporter")
        assert view["enabled"] is False and view["next_run_at"] is None


async def test_the_apis_choice_survives_restarts_and_unchanged_yaml_but_a_yaml_change_wins(tmp_path):
    clock = FakeClock(T0)
    path = tmp_path / "agents" / "r.yaml"
    async with scheduled(tmp_path, clock, {"r.yaml": agent("reporter", EVERY_MINUTE)}) as p:
        view = await clock.after(p.scheduler.set_enabled("reporter", False))
        assert view["enabled"] is False and view["next_run_at"] is None
        await clock.advance(300)
        assert await fired(p, "reporter") == []
    async with scheduled(tmp_path, clock) as p:  # restarted: still disabled
        await clock.advance(120)
        assert await fired(p, "reporter") == []
        path.write_text(agent("reporter", EVERY_MINUTE, '{"v": 2}'))  # edited, `enabled` untouched
        await clock.after(p.config.reload())
        await clock.advance(120)
        assert await fired(p, "reporter") == [] and not (await p.store.get_schedule("reporter")).enabled
        # the YAML's `enabled` changes: true → false, then false → true: the YAML wins
        path.write_text(agent("reporter", EVERY_MINUTE + "enabled: false\n"))
        await clock.after(p.config.reload())
        path.write_text(agent("reporter", EVERY_MINUTE + "enabled: true\n"))
        await clock.after(p.config.reload())
        view = await p.scheduler.get_schedule("reporter")
        assert view["enabled"] is True
        now = clock.now()
        await clock.advance(60)
        assert len(await fired(p, "reporter")) == 1
        # enabling does not catch up the ticks missed while disabled: the first comes after the change
        assert (await fired(p, "reporter"))[0] > now


async def test_enabling_a_yaml_disabled_schedule_through_the_api_lasts(tmp_path):
    clock = FakeClock(T0)
    async with scheduled(tmp_path, clock, {"r.yaml": agent("reporter", EVERY_MINUTE + "enabled: false\n")}) as p:
        await clock.advance(90)
        view = await clock.after(p.scheduler.set_enabled("reporter", True))
        assert view["enabled"] is True and view["next_run_at"] == minutes(2)[0].isoformat()  # on its grid
        await clock.advance(30)
        assert await fired(p, "reporter") == minutes(2)
    async with scheduled(tmp_path, clock) as p:
        await clock.advance(60)
        assert await fired(p, "reporter") == minutes(2, 3)


async def test_schedules_follow_the_yaml_added_changed_and_removed(tmp_path):
    clock = FakeClock(T0)
    agents = tmp_path / "agents"
    async with scheduled(tmp_path, clock, {"r.yaml": agent("reporter", EVERY_MINUTE)}) as p:
        await clock.advance(60)
        assert await fired(p, "reporter") == minutes(1)
        (agents / "r.yaml").write_text(agent("reporter", "type: interval\ninterval_seconds: 300\n"))
        (agents / "n.yaml").write_text(agent("nightly", "type: cron\ncron: '0 3 * * *'\n"))
        await clock.after(p.config.reload())
        assert (await p.scheduler.get_schedule("reporter"))["next_run_at"] == minutes(6)[0].isoformat()
        nightly = await p.scheduler.get_schedule("nightly")
        assert nightly["next_run_at"] == utc(2024, 1, 2, 3).isoformat() and nightly["cron"] == "0 3 * * *"
        await clock.advance(300)
        assert await fired(p, "reporter") == minutes(1, 6)
        (agents / "r.yaml").unlink()
        await clock.after(p.config.reload())
        assert await p.store.get_schedule("reporter") is None
        assert await p.scheduler.get_schedule("reporter") is None
        assert [row.schedule_name for row in await p.store.list_schedules()] == ["nightly"]
        await clock.advance(600)
        assert await fired(p, "reporter") == minutes(1, 6)


async def test_the_default_timezone_is_scheduler_timezone(tmp_path):
    clock = FakeClock(T0)
    files = {"n.yaml": agent("nightly", "type: cron\ncron: '0 9 * * *'\n")}
    async with scheduled(tmp_path, clock, files, environ={"SCHEDULER_TIMEZONE": "Asia/Tokyo"}) as p:
        view = await p.scheduler.get_schedule("nightly")
        assert view["timezone"] == "Asia/Tokyo" and view["next_run_at"] == utc(2024, 1, 2, 0).isoformat()


# --- The SchedulerService -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def service(platform: Platform) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(scheduler_service.create_app(platform))) as client:
        yield client


def assert_error(response_status: int, body: dict, status: int, code: str) -> None:
    assert response_status == status, body
    assert set(body) == {"error"} and body["error"]["code"] == code, body


SERVICE_FILES = {
    "r.yaml": agent("reporter", EVERY_MINUTE, '{"report": "sales", "token": "${SCHEDULE_TOKEN}"}'),
    "n.yaml": agent("nightly", "type: cron\ncron: '30 2 * * 1-5'\ntimezone: Europe/Paris\ntimeout_seconds: 60\n"),
}


async def test_the_service_lists_shows_runs_disables_and_enables_schedules(tmp_path):
    clock = FakeClock(T0)
    async with scheduled(tmp_path, clock, SERVICE_FILES, environ={"SCHEDULE_TOKEN": SECRET}) as p, \
            service(p) as client:
        response = await client.get("/schedules")
        body = await response.json()
        assert response.status == 200 and list(body) == ["schedules"]
        nightly, reporter = body["schedules"]
        assert nightly == {"name": "nightly", "agent_name": "nightly", "type": "cron", "cron": "30 2 * * 1-5",
                           "timezone": "Europe/Paris", "enabled": True, "next_run_at": "2024-01-02T01:30:00+00:00",
                           "last_execution": None, "task_data": {}, "timeout_seconds": 60.0}
        assert reporter == {"name": "reporter", "agent_name": "reporter", "type": "interval",
                            "interval_seconds": 60, "timezone": "UTC", "enabled": True,
                            "next_run_at": minutes(1)[0].isoformat(), "last_execution": None,
                            "task_data": {"report": "sales", "token": "***"}, "timeout_seconds": 300.0}
        assert SECRET not in await response.text()

        await clock.advance(60)
        response = await client.get("/schedules/reporter")
        shown = await response.json()
        assert response.status == 200 and shown["last_execution"] == minutes(1)[0].isoformat()

        # run now: a task at once, not a tick
        response = await client.post("/schedules/reporter/run")
        body = await response.json()
        assert response.status == 202 and body["status"] == "queued" and body["schedule"] == "reporter"
        execution = await p.store.get_execution(body["execution_id"])
        assert execution.input == {"report": "sales", "token": SECRET}  # the agent gets the real value
        assert execution.data["schedule"] == "reporter" and execution.data["run_now"] is True
        assert await fired(p, "reporter") == minutes(1)
        assert (await p.store.get_schedule("reporter")).last_execution == minutes(1)[0]

        response = await clock.after(client.post("/schedules/reporter/disable", json={}))
        body = await response.json()
        assert response.status == 200 and body["enabled"] is False and body["next_run_at"] is None
        await clock.advance(300)
        assert await fired(p, "reporter") == minutes(1)
        response = await clock.after(client.post("/schedules/reporter/enable"))
        body = await response.json()
        assert response.status == 200 and body["enabled"] is True and body["next_run_at"] == minutes(7)[0].isoformat()
        await clock.advance(60)
        assert await fired(p, "reporter") == minutes(1, 7)


async def test_unknown_schedules_and_bodies_are_refused(tmp_path):
    files = {**SERVICE_FILES, "plain.yaml": SERVICE_FILES["n.yaml"].replace("nightly", "plain").split(
        "schedule_config")[0].replace("scheduled", "autonomous")}
    async with scheduled(tmp_path, FakeClock(T0), files, environ={"SCHEDULE_TOKEN": SECRET}) as p, \
            service(p) as client:
        for name in ("nope", "plain"):  # no agent, or an agent without a schedule
            response = await client.get(f"/schedules/{name}")
            assert_error(response.status, await response.json(), 404, "not_found")
            for action in ("run", "enable", "disable"):
                response = await client.post(f"/schedules/{name}/{action}")
                assert_error(response.status, await response.json(), 404, "not_found")
        response = await client.post("/schedules/reporter/run", json={"input": "x"})
        assert_error(response.status, await response.json(), 400, "unknown_field")
        response = await client.post("/schedules/reporter/disable", data="x", headers={"Content-Type": "text/plain"})
        assert_error(response.status, await response.json(), 415, "unsupported_media_type")
        assert (await p.store.get_schedule("reporter")).enabled


async def test_the_service_needs_the_api_key(tmp_path):
    environ = {"API_AUTH_ENABLED": "true", "API_KEY": API_KEY, "SCHEDULE_TOKEN": SECRET}
    async with scheduled(tmp_path, FakeClock(T0), SERVICE_FILES, environ=environ) as p, service(p) as client:
        for method, path in (("GET", "/schedules"), ("GET", "/schedules/reporter"), ("POST", "/schedules/reporter/run"),
                             ("POST", "/schedules/reporter/disable"), ("POST", "/schedules/reporter/enable")):
            response = await client.request(method, path)
            assert_error(response.status, await response.json(), 401, "unauthorized")
        response = await client.get("/schedules", headers={"X-API-Key": API_KEY})
        assert response.status == 200 and len((await response.json())["schedules"]) == 2
        assert (await client.get("/health")).status == 200


async def test_the_service_answers_without_a_running_scheduler(tmp_path):
    """`serve --service orchestrator` elsewhere does not run the scheduler; the API still reads the table."""
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "r.yaml").write_text(SERVICE_FILES["n.yaml"])
    settings = load_settings(environ={"SQLITE_PATH": str(tmp_path / "db.sqlite"), "CONFIG_AGENTS_DIR": str(agents),
                                      "CONFIG_HOT_RELOAD": "false"}, env_file=None)
    platform = Platform(settings, pm=make_plugin_manager(load_entry_points=False))
    await platform.start(consume=False)
    try:
        assert not platform.scheduler.running
        async with service(platform) as client:
            body = await (await client.get("/schedules/nightly")).json()
            assert body["enabled"] is True and body["next_run_at"] is not None
            response = await client.post("/schedules/nightly/disable")
            assert (await response.json())["enabled"] is False
            assert not (await platform.store.get_schedule("nightly")).enabled
    finally:
        await platform.stop(grace=1)


async def test_an_interval_of_one_second_runs_end_to_end_on_the_real_clock(tmp_path):
    files = {"t.yaml": agent("ticker", "type: interval\ninterval_seconds: 1\n", '{"ping": 1}')}
    async with scheduled(tmp_path, None, files, consume=True) as p, service(p) as client:
        deadline = asyncio.get_running_loop().time() + 8
        while True:
            executions, _ = await p.store.list_executions(agent_name="ticker", status="completed")
            if len(executions) >= 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(executions) >= 2
        times = sorted(datetime.fromisoformat(e.data["fire_time"]) for e in executions)
        assert all(later - earlier == timedelta(seconds=1) for earlier, later in itertools.pairwise(times))
        assert all(e.result is not None for e in executions)
        body = await (await client.get("/schedules/ticker")).json()
        assert body["last_execution"] is not None
        assert datetime.fromisoformat(body["next_run_at"]) > datetime.fromisoformat(body["last_execution"])
