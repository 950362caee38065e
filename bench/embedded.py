"""Benchmark: tasks through HTTP → bus → echo → store on the embedded defaults.

Starts `agentrunner serve` (SQLite store, in-memory bus, echo agent) and, as the
ceiling, a bare aiohttp JSON handler on the same event loop (EVENT_LOOP: uvloop
when installed), each in its own process; drives both with the same load
generator in the same run, and reports completed tasks/s, p50/p99
submit-to-result latency, and the server's memory over the run.

    python bench/embedded.py                       # defaults: 20,000 tasks, 32 in flight, 5 rounds
    python bench/embedded.py --tasks 100000        # the memory-flatness run

Each task is `POST /agents/bench-echo/tasks {"input": ..., "wait": 30}`, which
answers when the execution has completed, so a request's latency is the task's
submit-to-result latency. The load is sent in rounds that alternate between
the ceiling and agentrunner, so that drift on the machine (a shared VM's
neighbours) weighs on both alike; the figures are the medians over the rounds,
the ratio the median of the rounds' ratios. The ceiling counts only if the
generator drives the bare handler at ≥ 2× agentrunner's rate (otherwise the
generator is the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

AGENT = textwrap.dedent("""\
    name: bench-echo
    agent_type: assistant
    execution_mode: autonomous
    llm_config:
      temperature: 0.7
    system_prompt: Echo.
    """)

BARE_SERVER = textwrap.dedent("""\
    import sys
    from aiohttp import web

    async def handle(request):
        body = await request.json()
        return web.json_response({"execution_id": "x", "status": "completed", "result": body.get("input")})

    app = web.Application()
    app.router.add_post("/agents/{name}/tasks", handle)
    app.router.add_get("/health", lambda request: web.json_response({"status": "ok"}))
    if sys.argv[2] == "uvloop":  # the loop agentrunner runs on, so that only the handler differs
        import uvloop
        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


async def drive(url: str, tasks: int, concurrency: int, pid: int | None = None) -> dict:
    """Send `tasks` requests with `concurrency` in flight; latencies in ms, RSS samples in MiB."""
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(tasks))
    samples: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failures
            for number in remaining:
                started = time.perf_counter()
                async with session.post(url, json={"input": f"task {number}", "wait": 30}) as response:
                    body = await response.json()
                if response.status != 200 or body.get("status") != "completed":
                    failures += 1
                latencies.append((time.perf_counter() - started) * 1000)
                if pid and number % max(1, tasks // 10) == 0:
                    samples.append(rss_mib(pid))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "tasks": tasks, "concurrency": concurrency, "failures": failures, "seconds": elapsed,
        "rate": tasks / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "rss": samples,
    }


def start_agentrunner(workdir: Path, port: int) -> subprocess.Popen:
    (workdir / "agents").mkdir()
    (workdir / "agents" / "bench-echo.yaml").write_text(AGENT)
    env = {**os.environ, "ORCHESTRATOR_PORT": str(port), "SQLITE_PATH": str(workdir / "bench.db"),
           "CONFIG_HOT_RELOAD": "false", "LOG_LEVEL": "WARNING", "ORCHESTRATOR_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "agentrunner", "serve", "--config", str(workdir),
                             "--service", "orchestrator"], env=env, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def report(name: str, result: dict) -> None:
    print(f"{name:<28} {result['rate']:>9.0f}/s  p50 {result['p50']:>7.2f} ms  p99 {result['p99']:>7.2f} ms"
          f"  ({result['tasks']} tasks, {result['concurrency']} in flight, {result['failures']} failed)")


def median_of(results: list[dict]) -> dict:
    """One line for several rounds: the median rate and latencies, the sums of tasks and failures."""
    return {"tasks": sum(r["tasks"] for r in results), "concurrency": results[0]["concurrency"],
            "failures": sum(r["failures"] for r in results),
            **{key: statistics.median(r[key] for r in results) for key in ("rate", "p50", "p99")},
            "rss": [value for r in results for value in r["rss"]]}


async def main() -> None:
    from agentrunner import eventloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks under load, in all (default 20,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight under load")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of load, alternating the two (default 5)")
    parser.add_argument("--latency-tasks", type=int, default=2_000, help="tasks sent one at a time")
    args = parser.parse_args()

    loop = eventloop.loop_name(os.environ.get("EVENT_LOOP", "auto"))
    per_round = max(1, args.tasks // args.rounds)
    bare_port, runner_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port), loop])
        server = start_agentrunner(Path(tmp), runner_port)
        try:
            await wait_healthy(f"http://127.0.0.1:{bare_port}/health")
            await wait_healthy(f"http://127.0.0.1:{runner_port}/health")
            bare_url = f"http://127.0.0.1:{bare_port}/agents/bench-echo/tasks"
            url = f"http://127.0.0.1:{runner_port}/agents/bench-echo/tasks"
            await drive(url, 500, 8)  # warm up
            await drive(bare_url, 500, 8)
            print(f"load: {args.rounds} rounds of {per_round} tasks each, {args.concurrency} in flight; "
                  f"latency: {args.latency_tasks} one at a time; event loop: {loop}")
            ceilings, loads, ratios = [], [], []
            for number in range(args.rounds):
                # alternate which goes first, so neither always runs on a machine the other warmed up
                first_bare = number % 2 == 0
                for which in ("bare", "runner") if first_bare else ("runner", "bare"):
                    if which == "bare":
                        ceilings.append(await drive(bare_url, per_round, args.concurrency))
                    else:
                        loads.append(await drive(url, per_round, args.concurrency, pid=server.pid))
                ratios.append(loads[-1]["rate"] / ceilings[-1]["rate"])
                print(f"  round {number + 1}: ceiling {ceilings[-1]['rate']:.0f}/s, "
                      f"agentrunner {loads[-1]['rate']:.0f}/s, ratio {ratios[-1]:.2f}", flush=True)
            ceiling, loaded = median_of(ceilings), median_of(loads)
            report("bare aiohttp (ceiling)", ceiling)
            report("agentrunner (embedded)", loaded)
            single = await drive(url, args.latency_tasks, 1)
            report("agentrunner, 1 in flight", single)
            bare_single = await drive(bare_url, args.latency_tasks, 1)
            report("bare aiohttp, 1 in flight", bare_single)
            valid = ceiling["rate"] >= 2 * loaded["rate"]
            print(f"throughput ratio agentrunner / ceiling: {statistics.median(ratios):.2f} "
                  f"(median of {len(ratios)} rounds; range {min(ratios):.2f}–{max(ratios):.2f})"
                  + ("" if valid else "  (ceiling below 2x agentrunner: the generator may be the bottleneck)"))
            print(f"p50 latency, 1 in flight: {single['p50']:.2f} ms (ceiling {bare_single['p50']:.2f} ms)")
            rss = loaded["rss"]
            rss = [*rss[:-1:max(1, len(rss) // 10)], *rss[-1:]]  # about ten samples, the last one included
            if rss:
                print(f"server RSS over the run (MiB): {', '.join(f'{v:.0f}' for v in rss)}")
        finally:
            for process in (server, bare):
                process.send_signal(signal.SIGTERM)
            for process in (server, bare):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    asyncio.run(main())
