"""Benchmark: agentrunner on the production stack, side by side with what a user would build instead.

One run, on the same PostgreSQL, RabbitMQ and Redis, measures four systems doing the same job:

    (a) the broker's ceiling for aio-pika: publish (persistent, publisher confirms) → consume → ack,
        no HTTP, no database;
    (b) a naive hand-written pipeline: aiohttp POST → aio-pika publish → consumer process → one
        asyncpg INSERT per task → ack → reply to the waiting handler (bench/production_naive.py);
    (c) aiohttp calling Celery 5 apply_async on the same RabbitMQ, a prefork worker writing the same
        row, the result read back from Redis (bench/production_celery.py);
    (d) agentrunner: `serve --service orchestrator` + `agentrunner worker`, PostgreSQL + RabbitMQ +
        Redis, an echo agent.

    python bench/production.py                            # 2,000 tasks, 32 in flight, 3 repeats, 2 workers
    python bench/production.py --tasks 5000 --repeat 5
    python bench/production.py --systems d --compare 'WORKER_THREADS_PER_PROCESS=4' --repeat 10

Each system is run --repeat times, interleaved (a b c d a b c d …) so drift affects all alike, and
the medians are compared. --compare adds (e), agentrunner again with other settings, run alternately
with (d), and reports (e)/(d) run by run. A task's latency is submit-to-result: the client's request
returns only when the task's row (or, for (a), the ack) is recorded. Everything the run creates — a database
agentrunner_bench_<random>, exchanges and queues bench-<random>…, Redis keys bench-<random>… in
db 14 — is removed at the end, and every child process is stopped, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))

from embedded import AGENT, drive, free_port, wait_healthy

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_DB = 14

LABELS = {
    "a": "(a) broker ceiling: aio-pika",
    "b": "(b) naive aiohttp+aio-pika+asyncpg",
    "c": "(c) aiohttp + Celery 5",
    "d": "(d) agentrunner serve + workers",
    "e": "(e) agentrunner with --compare",
}
UNIT = {"a": "msg", "b": "tasks", "c": "tasks", "d": "tasks", "e": "tasks"}
#: where each system's rows are (schema of execution_history); (a) writes none; (e) has a database of its own
SCHEMA = {"b": "naive", "c": "celery", "d": "public", "e": "public"}
#: the child processes' log names of each system start with this
LOGS = {"b": "naive-", "c": "celery-", "d": "agentrunner-", "e": "compare-"}
#: the shared services, whose CPU time is reported per task too
SERVICES = {"beam.smp": "RabbitMQ", "postgres": "PostgreSQL", "redis-server": "Redis"}


def cpu_seconds(groups: set[int]) -> tuple[float, dict[str, float]]:
    """CPU seconds used so far by the processes of `groups` (process group ids), and by each service."""
    tick = os.sysconf("SC_CLK_TCK")
    own = 0.0
    services = dict.fromkeys(SERVICES.values(), 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name, fields = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        # utime + stime + the same of reaped children (a recycled worker's time moves to its parent)
        used = sum(int(value) for value in fields[11:15]) / tick  # fields[2] is the process group
        if int(fields[2]) in groups:
            own += used
        elif name in SERVICES:
            services[SERVICES[name]] += used
    return own, services


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("aiohttp", "aio-pika", "asyncpg", "celery", "kombu", "redis", "agentrunner",
                 "agentrunner-postgres", "agentrunner-rabbitmq", "agentrunner-redis"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


async def rabbitmq_version() -> str:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        return str(connection.transport.connection.server_properties.get("version", "?"))


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop measuring, clean up."""


class Broker:
    """System (a): publish with confirms → consume → ack, in this process, on two connections."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.waiting: dict[str, asyncio.Future] = {}
        self.connections: list[Any] = []

    async def start(self, prefetch: int) -> None:
        publisher, consumer = await aio_pika.connect(AMQP_URL), await aio_pika.connect(AMQP_URL)
        self.connections = [publisher, consumer]
        self.channel = await publisher.channel()  # publisher confirms on: each publish awaits its confirm
        consuming = await consumer.channel()
        await consuming.set_qos(prefetch_count=prefetch)
        queue = await consuming.declare_queue(self.queue, durable=True)
        await self.channel.declare_queue(self.queue, durable=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            future = self.waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(None)

        await queue.consume(on_message)

    async def stop(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(Exception):
                await connection.close()

    async def drive(self, tasks: int, concurrency: int) -> dict:
        """The same measurement as embedded.drive, on messages instead of HTTP requests."""
        latencies: list[float] = []
        failures = 0
        remaining = iter(range(tasks))
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            nonlocal failures
            for number in remaining:
                started = time.perf_counter()
                key = uuid.uuid4().hex
                future = self.waiting[key] = loop.create_future()
                try:
                    await self.channel.default_exchange.publish(
                        aio_pika.Message(f'{{"input": "task {number}"}}'.encode(), correlation_id=key,
                                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=self.queue)
                    await asyncio.wait_for(future, 30)
                except Exception:
                    failures += 1
                    self.waiting.pop(key, None)
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        latencies.sort()
        return {"tasks": tasks, "concurrency": concurrency, "failures": failures, "seconds": elapsed,
                "rate": tasks / elapsed, "p50": statistics.median(latencies),
                "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


class Bench:
    """One run: the services' resources, the child processes, the measurements; `cleanup` undoes it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.suffix = uuid.uuid4().hex[:10]
        self.prefix = f"bench-{self.suffix}"
        self.database = f"agentrunner_bench_{self.suffix}"
        self.database_url = f"{POSTGRES}/{self.database}"
        self.tmp = Path(tempfile.mkdtemp(prefix="agentrunner-bench-"))
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.logs: dict[str, Path] = {}
        self.database_created = False
        self.compare_database = f"{self.database}_e"  # (e): agentrunner again, with --compare's settings
        self.compare_created = False
        self.compare_db: Any = None
        self.broker = Broker(f"{self.prefix}.ceiling")
        self.urls: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.loaded: dict[str, list[dict]] = {key: [] for key in LABELS}
        self.single: dict[str, list[dict]] = {key: [] for key in LABELS}
        self.db: Any = None
        self.interrupted = False

    # --- child processes -----------------------------------------------------------------------

    def spawn(self, name: str, command: list[str], env: dict[str, str], cwd: Path = BENCH) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def tail(self, *names: str, lines: int = 12) -> str:
        text = []
        for name in names:
            log = self.logs.get(name)
            if log and log.exists():
                content = log.read_text(errors="replace").strip().splitlines()[-lines:]
                if content:
                    text.append(f"--- {name} log ---\n" + "\n".join(content))
        return "\n".join(text)

    def stop_processes(self) -> None:
        """SIGTERM each child (they drain), then SIGKILL whatever is left of its process group."""
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _name, process in reversed(self.processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the group id is its pid
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.processes.clear()

    def child_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BENCH_AMQP_URL": AMQP_URL, "BENCH_DATABASE_URL": self.database_url,
                "BENCH_PREFIX": self.prefix, "BENCH_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")])),
                **extra}

    # --- set-up ----------------------------------------------------------------------------------

    async def create_database(self) -> None:
        import asyncpg

        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
            self.database_created = True
            if self.args.compare is not None:  # (e) migrates its own tables, into a database of its own
                await admin.execute(f'CREATE DATABASE "{self.compare_database}"')
                self.compare_created = True
        finally:
            await admin.close()
        self.db = await asyncpg.connect(self.database_url)
        if self.compare_created:
            self.compare_db = await asyncpg.connect(f"{POSTGRES}/{self.compare_database}")
        schema = (REPO / "sql" / "002_execution_history.sql").read_text()
        for name in ("naive", "celery"):  # (d) migrates its own tables into public
            await self.db.execute(f"CREATE SCHEMA {name}; SET search_path TO {name}; {schema}; RESET search_path")

    async def rows(self, key: str) -> int:
        if key not in SCHEMA:
            return 0
        table = f"{SCHEMA[key]}.execution_history"
        db = self.compare_db if key == "e" else self.db
        with contextlib.suppress(Exception):
            return await db.fetchval(f"SELECT count(*) FROM {table} WHERE agent_name = 'bench-echo'")
        return 0

    async def start_naive(self) -> None:
        port = free_port()
        env = self.child_env(BENCH_PREFETCH=str(self.args.prefetch))
        self.spawn("naive-intake", [sys.executable, str(BENCH / "production_naive.py"), "intake", str(port)], env)
        for number in range(self.args.workers):
            self.spawn(f"naive-consumer-{number}", [sys.executable, str(BENCH / "production_naive.py"), "consumer"],
                       env)
        await self.await_healthy("b", port, "naive-intake")
        await self.await_lines("b", [f"naive-consumer-{n}" for n in range(self.args.workers)], "ready", 1)

    async def start_celery(self) -> None:
        port = free_port()
        env = self.child_env()
        threads = self.args.celery_threads or 2 * self.args.concurrency
        self.spawn("celery-intake", [sys.executable, str(BENCH / "production_celery.py"), "intake", str(port),
                                     str(threads)], env)
        self.spawn("celery-worker", [sys.executable, "-m", "celery", "-A", "production_celery", "worker",
                                     "--pool=prefork", f"--concurrency={self.args.workers}", "--loglevel=WARNING",
                                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                                     "-n", f"{self.prefix}@%h"], env)
        await self.await_healthy("c", port, "celery-intake")
        await self.await_lines("c", ["celery-worker"], "bench worker ready", 1)

    async def start_agentrunner(self, key: str = "d") -> None:
        """(d), or with key "e" the same again on a database, exchange and key prefix of its own, with
        --compare's settings added to the environment of serve, of the workers, or of both."""
        missing = [name for name in ("agentrunner_postgres", "agentrunner_rabbitmq", "agentrunner_redis")
                   if importlib.util.find_spec(name) is None]
        if missing:
            raise RuntimeError(f"not installed: {', '.join(m.replace('_', '-') for m in missing)} "
                               "(pip install -e plugins/<name>)")
        config = self.tmp / f"config-{key}"
        (config / "agents").mkdir(parents=True)
        (config / "agents" / "bench-echo.yaml").write_text(AGENT)
        port = free_port()
        name = LOGS[key].rstrip("-")  # agentrunner, compare: the names of its processes and resources
        database_url = self.database_url if key == "d" else f"{POSTGRES}/{self.compare_database}"
        env = {**os.environ, "DATABASE_URL": database_url, "RABBITMQ_URL": AMQP_URL,
               "RABBITMQ_EXCHANGE": f"{self.prefix}-{name}", "REDIS_HOST": "127.0.0.1",
               "REDIS_DB": str(REDIS_DB), "REDIS_KEY_PREFIX": f"{self.prefix}:{name}:",
               "CONFIG_HOT_RELOAD": "false", "ORCHESTRATOR_PORT": str(port), "WORKER_PROCESSES": str(self.args.workers),
               "LOG_LEVEL": "WARNING", "ORCHESTRATOR_LOG_LEVEL": "WARNING"}
        serve_env, worker_env = env, env
        if key == "e":
            serve_env, worker_env = ({**env, **self.args.compare[role]} for role in ("serve", "worker"))
        command = [sys.executable, "-m", "agentrunner"]
        self.spawn(f"{name}-serve", [*command, "serve", "--config", str(config), "--service", "orchestrator"],
                   serve_env, cwd=self.tmp)
        await self.await_healthy(key, port, f"{name}-serve", timeout=60)
        self.spawn(f"{name}-worker", [*command, "worker", "--config", str(config)], worker_env, cwd=self.tmp)
        await self.await_lines(key, [f"{name}-worker"], "consuming", int(worker_env["WORKER_PROCESSES"]))

    async def await_healthy(self, key: str, port: int, name: str, timeout: float = 30) -> None:
        process = dict(self.processes)[name]
        try:
            await asyncio.wait_for(self._healthy_or_dead(port, process), timeout)
        except Exception as exc:
            raise RuntimeError(f"{name} did not start ({exc or type(exc).__name__})\n{self.tail(name)}") from None
        self.urls[key] = f"http://127.0.0.1:{port}/agents/bench-echo/tasks"

    async def _healthy_or_dead(self, port: int, process: subprocess.Popen) -> None:
        waiting = asyncio.ensure_future(wait_healthy(f"http://127.0.0.1:{port}/health", timeout=120))
        try:
            while not waiting.done():
                if process.poll() is not None:
                    raise RuntimeError(f"exited with code {process.returncode}")
                await asyncio.sleep(0.1)
            waiting.result()
        finally:
            waiting.cancel()

    async def await_lines(self, key: str, names: list[str], marker: str, count: int, timeout: float = 60) -> None:
        """Wait until each of `names` has logged `marker` `count` times (consumers ready)."""
        deadline = time.monotonic() + timeout
        processes = dict(self.processes)
        while True:
            found = [self.logs[name].read_text(errors="replace").count(marker) for name in names]
            if all(n >= count for n in found):
                return
            dead = [name for name in names if processes[name].poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout:g} s"
                raise RuntimeError(f"{why}\n{self.tail(*names)}")
            await asyncio.sleep(0.2)

    # --- measuring -------------------------------------------------------------------------------

    async def measure(self, key: str, tasks: int, concurrency: int) -> dict:
        if key == "a":
            return await self.broker.drive(tasks, concurrency)
        return await drive(self.urls[key], tasks, concurrency)

    async def attempt(self, key: str, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        """Run one step of system `key`; a failure takes the system out of the run, with the reason."""
        try:
            return await step()
        except Interrupted:
            raise
        except Exception as exc:
            reason = f"{what} failed: {type(exc).__name__}: {exc}".strip()
            self.skipped[key] = reason
            print(f"  ✗ {LABELS[key]}: {reason}", flush=True)
            return None

    async def main(self) -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def interrupt() -> None:
            self.interrupted = True  # checked between steps too, in case a library swallows the cancellation
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                loop.add_signal_handler(sig, interrupt)
        try:
            await self._main()
        finally:  # connections belong to this event loop: close them in it, even when interrupted
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.stop(), 10)
            for db in (self.db, self.compare_db):
                if db is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(db.close(), 10)
            self.db = self.compare_db = None

    async def _main(self) -> None:
        args = self.args
        print(f"production benchmark {self.prefix}: {args.tasks} tasks with {args.concurrency} in flight and "
              f"{args.latency_tasks} one at a time, {args.repeat} repeat(s) interleaved, {args.workers} worker "
              f"processes per system, on {os.cpu_count()} CPU(s) ({platform.machine()}, Python "
              f"{platform.python_version()})", flush=True)
        await self.create_database()
        print(f"database {self.database}; queues/exchanges/Redis keys (db {REDIS_DB}) {self.prefix}*", flush=True)
        print(f"services: PostgreSQL {await self.db.fetchval('SHOW server_version')}, RabbitMQ "
              f"{await rabbitmq_version()}; {versions()}", flush=True)
        starts = {"a": lambda: self.broker.start(max(args.concurrency, 1) * 2), "b": self.start_naive,
                  "c": self.start_celery, "d": self.start_agentrunner,
                  "e": lambda: self.start_agentrunner("e")}
        for key in set(starts) - set(args.systems):
            self.skipped[key] = "not selected (--systems)"
        if args.compare is None:
            self.skipped["e"] = "no --compare"
        for key, start in starts.items():
            if key in self.skipped:
                continue
            if self.interrupted:
                raise Interrupted
            print(f"starting {LABELS[key]}", flush=True)
            await self.attempt(key, "start", start)
        active = [key for key in LABELS if key not in self.skipped]
        for key in active:  # warm up: connections, pools, prepared statements, worker children
            result = await self.attempt(key, "warm-up", lambda key=key: self.measure(key, 200, 8))
            if result and result["failures"]:
                logs = [name for name in self.logs if name.startswith(LOGS.get(key, "-"))]
                self.skipped[key] = f"warm-up: {result['failures']} of 200 tasks failed\n{self.tail(*logs)}"
                print(f"  ✗ {LABELS[key]}: {self.skipped[key]}", flush=True)
        for repeat in range(1, args.repeat + 1):
            order = [k for k in LABELS if k not in self.skipped]
            if repeat % 2 == 0 and "d" in order and "e" in order:  # (d) and (e) take turns going first
                order[order.index("d")], order[order.index("e")] = "e", "d"
            for key in order:
                await self.run_one(key, repeat, args.tasks, args.concurrency, self.loaded)
            for key in order:
                await self.run_one(key, repeat, args.latency_tasks, 1, self.single)
        self.report()

    async def run_one(self, key: str, repeat: int, tasks: int, concurrency: int, into: dict) -> None:
        if self.interrupted:
            raise Interrupted
        print(f"[{repeat}/{self.args.repeat}] {LABELS[key]:<36} {tasks:>6} {UNIT[key]}, {concurrency:>3} in flight … ",
              end="", flush=True)
        before = await self.rows(key)
        groups = {process.pid for name, process in self.processes if name.startswith(LOGS.get(key, "-"))}
        own, services, mine = *cpu_seconds(groups), time.process_time()
        result = await self.attempt(key, "run", lambda: self.measure(key, tasks, concurrency))
        if result is None:
            return
        own_after, services_after = cpu_seconds(groups)
        result["rows"] = await self.rows(key) - before
        result["repeat"] = repeat
        # CPU ms per task: the system's own processes ((a): this process, publisher and consumer) and the services
        result["cpu"] = 1000 * ((time.process_time() - mine) if key == "a" else own_after - own) / tasks
        spent = {name: 1000 * (services_after[name] - services[name]) / tasks for name in services}
        result["services_cpu"] = sum(spent.values())
        into[key].append(result)
        rows = f", {result['rows']} rows" if key in SCHEMA else ""
        print(f"{result['rate']:>6.0f}/s  p50 {result['p50']:>6.2f} ms  p99 {result['p99']:>7.2f} ms"
              f"  CPU/task {result['cpu']:.2f} + services {result['services_cpu']:.2f} ms "
              f"({', '.join(f'{name} {ms:.2f}' for name, ms in spent.items())})"
              f"  ({result['failures']} failed{rows})", flush=True)

    def report(self) -> None:
        def median(key: str, field: str, source: dict) -> float | None:
            values = [r[field] for r in source[key]]
            return statistics.median(values) if values else None

        print()
        print(f"medians of {self.args.repeat} run(s); {self.args.tasks} tasks, {self.args.concurrency} in flight; "
              f"single task: {self.args.latency_tasks} sent one at a time")
        print(f"{'system':<36} {'per s':>7} {'(min–max)':>13} {'p50 ms':>8} {'p99 ms':>8} {'1-in-flight p50':>16}"
              f" {'CPU ms/task':>12} {'services':>9} {'failed':>7}")
        shown = {key: label for key, label in LABELS.items() if key != "e" or self.args.compare is not None}
        for key, label in shown.items():
            if not self.loaded[key]:
                print(f"{label:<36} not measured: {self.skipped.get(key, 'no result').splitlines()[0]}")
                continue
            rates = [r["rate"] for r in self.loaded[key]]
            single = median(key, "p50", self.single)
            failed = sum(r["failures"] for r in self.loaded[key] + self.single[key])
            print(f"{label:<36} {median(key, 'rate', self.loaded):>7.0f} {f'({min(rates):.0f}–{max(rates):.0f})':>13}"
                  f" {median(key, 'p50', self.loaded):>8.2f} {median(key, 'p99', self.loaded):>8.2f}"
                  f" {'' if single is None else f'{single:.2f} ms':>16} {median(key, 'cpu', self.loaded):>12.2f}"
                  f" {median(key, 'services_cpu', self.loaded):>9.2f} {failed:>7}")
        print("CPU ms/task: CPU time of the system's own processes per task under load ((a): this process, "
              "publisher and consumer); services: RabbitMQ + PostgreSQL + Redis, shared (anyone's load counts)")
        rate = {key: median(key, "rate", self.loaded) for key in LABELS}
        if rate["a"]:
            shares = ", ".join(f"{k} {rate[k] / rate['a']:.2f}" for k in "bcd" if rate[k])
            if shares:
                print(f"share of the broker ceiling (x)/(a): {shares}")
        for other in "bc":
            if rate["d"] and rate[other]:
                ratio = rate["d"] / rate[other]
                pairs = self.run_by_run("d", other)  # empty only if no repeat measured both
                paired = f"; run by run {statistics.median(pairs):.2f} ({min(pairs):.2f}–{max(pairs):.2f})" \
                    if pairs else ""
                print(f"throughput (d)/({other}): {ratio:.2f}  (target ≥ 1.00: {'met' if ratio >= 1 else 'NOT met'})"
                      + paired)
        pairs = self.run_by_run("e", "d") if rate["d"] and rate["e"] else []
        if pairs:
            print(f"compare (e)/(d): median {statistics.median(pairs):.2f} of the runs' ratios "
                  f"({' '.join(f'{ratio:.2f}' for ratio in pairs)}); (e) ran with {self.args.compare_text}")
        single_c, single_d = median("c", "p50", self.single), median("d", "p50", self.single)
        if single_c and single_d:
            print(f"single-task p50: (d) {single_d:.2f} ms, (c) {single_c:.2f} ms  "
                  f"(target (d) ≤ (c): {'met' if single_d <= single_c else 'NOT met'})")
        wrong = [f"{LABELS[k]}: {r['rows']} rows for {r['tasks']} tasks" for k in SCHEMA
                 for r in self.loaded[k] + self.single[k] if r["rows"] != r["tasks"]]
        print("rows recorded: " + ("one per task for every run" if not wrong else "; ".join(wrong)))
        for key, reason in self.skipped.items():
            if key in shown:
                print(f"not measured {LABELS[key]}: {reason}")

    def run_by_run(self, key: str, other: str) -> list[float]:
        """The rate of ``key`` over that of ``other`` in each repeat: the two ran one after the other, so
        the drift of the machine (±20 % between runs minutes apart) mostly cancels out of each ratio."""
        rates = {run["repeat"]: run["rate"] for run in self.loaded[other]}
        return [run["rate"] / rates[run["repeat"]] for run in self.loaded[key] if run["repeat"] in rates]

    # --- clean-up --------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Remove this run's queues, exchanges, Redis keys and database (each step on its own)."""
        steps = [("RabbitMQ", self._delete_topology), ("Redis", self._delete_keys), ("PostgreSQL", self._drop)]
        for what, step in steps:
            try:
                await asyncio.wait_for(step(), 60)
            except Exception as exc:
                print(f"clean-up of {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def _delete_topology(self) -> None:
        def listed(kind: str) -> list[str]:
            try:
                out = subprocess.run(["rabbitmqctl", "-q", kind, "name"], capture_output=True, text=True,
                                     timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired):
                return []
            return [line.strip() for line in out.splitlines() if line.strip().startswith(self.prefix)]

        queues = set(await asyncio.to_thread(listed, "list_queues"))
        queues |= {self.broker.queue, f"{self.prefix}.naive.tasks", f"{self.prefix}.celery"}
        exchanges = set(await asyncio.to_thread(listed, "list_exchanges")) | {f"{self.prefix}.celery"}
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for name in sorted(queues):
                channel = await connection.channel()  # a failed delete closes its channel
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name)
            for name in sorted(exchanges):
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(name)

    async def _delete_keys(self) -> None:
        import redis.asyncio as redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        try:
            batch = [key async for key in client.scan_iter(match=f"{self.prefix}*", count=1000)]
            for start in range(0, len(batch), 1000):
                await client.delete(*batch[start:start + 1000])
        finally:
            await client.aclose()

    async def _drop(self) -> None:
        import asyncpg

        databases = [name for name, created in ((self.database, self.database_created),
                                                (self.compare_database, self.compare_created)) if created]
        if not databases:
            return
        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
        try:
            for name in databases:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def compare_settings(text: str) -> dict[str, dict[str, str]]:
    """--compare's ``NAME=value`` words, each for serve and the workers, or with ``serve:``/``worker:`` for one."""
    settings: dict[str, dict[str, str]] = {"serve": {}, "worker": {}}
    for word in text.split():
        target, equals, value = word.partition("=")
        role, _, name = target.rpartition(":")
        if not equals or not name or not name.replace("_", "").isalnum() or role not in ("", "serve", "worker"):
            raise ValueError(f"{word!r} is not NAME=value, serve:NAME=value or worker:NAME=value")
        for target in ((role,) if role else ("serve", "worker")):
            settings[target][name] = value
    if not any(settings.values()):
        raise ValueError("no setting given: (e) would be (d) again")
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2_000, help="tasks per run under load (default 2,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight under load (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each system, interleaved (default 3)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of (b), (c) and (d): consumers, prefork children, "
                             "WORKER_PROCESSES (default 2)")
    parser.add_argument("--latency-tasks", type=int, default=200,
                        help="tasks sent one at a time per repeat, for the single-task p50 (default 200)")
    parser.add_argument("--prefetch", type=int, default=16, help="prefetch of each (b) consumer (default 16)")
    parser.add_argument("--celery-threads", type=int, default=0,
                        help="threads of the (c) intake for apply_async and AsyncResult.get "
                             "(default 2 × --concurrency: each request in flight holds one in get)")
    parser.add_argument("--systems", default="abcd",
                        help="which systems to measure, e.g. 'bd' for the hand-written pipeline and agentrunner "
                             "(default abcd: all four)")
    parser.add_argument("--compare", metavar="SETTINGS",
                        help="also measure (e): agentrunner again with these settings, e.g. "
                             "'WORKER_THREADS_PER_PROCESS=4' or 'serve:TASK_ROUTING_STRATEGY=weighted "
                             "serve:WORKER_WEIGHT=3' (serve: or worker: for one of them only), its runs alternating "
                             "with (d)'s; reports (e)/(d) run by run")
    args = parser.parse_args()
    unknown = set(args.systems) - set("abcd")
    if unknown or not args.systems:
        parser.error(f"--systems: letters of abcd only, not {''.join(sorted(unknown)) or 'nothing'}")
    args.compare_text = args.compare
    if args.compare is not None:
        try:
            args.compare = compare_settings(args.compare)
        except ValueError as exc:
            parser.error(f"--compare: {exc}")
        if "d" not in args.systems:
            parser.error("--compare: (e) is compared with (d), so --systems must include d")
        args.systems += "e"
    bench = Bench(args)
    code = 0
    try:
        asyncio.run(bench.main())
        if bench.interrupted:
            raise Interrupted
    except (KeyboardInterrupt, asyncio.CancelledError, Interrupted):
        print("\ninterrupted: stopping and cleaning up", file=sys.stderr, flush=True)
        code = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up is short: let it finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_processes()
        asyncio.run(bench.cleanup())
        import shutil

        shutil.rmtree(bench.tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
