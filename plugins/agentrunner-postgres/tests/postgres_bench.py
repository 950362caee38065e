"""Benchmark (not a test): the task path's writes on the real server.

Each of N executions is created, claimed and finished (three statements, as the orchestrator
does), with C of them in flight at once, on a fresh database dropped afterwards:

    python plugins/agentrunner-postgres/tests/postgres_bench.py               # 2000 executions, 32 in flight
    python plugins/agentrunner-postgres/tests/postgres_bench.py -n 5000 -c 64 --pool 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agentrunner_postgres import PostgresStateStore
from postgres_support import SERVER_URL, create_database, database_url, drop_database, store_settings

from agentrunner.records import Execution, new_id, utcnow


async def run(total: int, concurrency: int, pool: int) -> None:
    name = await create_database(SERVER_URL)
    store = PostgresStateStore(store_settings(database_url(SERVER_URL, name), {
        "POSTGRES_MIN_POOL_SIZE": str(pool), "POSTGRES_MAX_POOL_SIZE": str(pool), "POSTGRES_POOL_MAX_OVERFLOW": "0"}))
    await store.start()
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            began = time.perf_counter()
            execution = Execution(execution_id=new_id(), agent_name=f"bench-{i % 8}", task_type="autonomous",
                                  input={"text": f"task {i}"}, data={"routing_key": "autonomous.task.submitted"})
            stored, created = await store.create_execution(execution)
            assert created
            assert await store.claim_execution(stored.execution_id, utcnow()) is not None
            assert await store.update_execution(stored.execution_id, expect_status=["running"], status="completed",
                                                result={"text": f"done {i}"}, completed_at=utcnow(),
                                                usage={"input_tokens": 3, "output_tokens": 5})
            latencies.append(time.perf_counter() - began)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await store.stop()
        await drop_database(SERVER_URL, name)
    latencies.sort()
    print(f"{total} executions (create + claim + finish), {concurrency} in flight, pool {pool}: "
          f"{elapsed:.2f} s, {total / elapsed:.0f} executions/s ({3 * total / elapsed:.0f} statements/s); "
          f"per execution p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--executions", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=30, help="connections (the default pool: 20 + 10 overflow)")
    args = parser.parse_args()
    asyncio.run(run(args.executions, args.concurrency, args.pool))


if __name__ == "__main__":
    main()
