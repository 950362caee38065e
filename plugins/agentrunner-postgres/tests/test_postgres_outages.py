"""Outages: clear errors at start (naming the variables, never the password), StoreUnavailable within
bounded time while running, recovery without a restart, and retries that never write twice.

A server other test runs share cannot be stopped: the path to it is cut by a TCP proxy instead
(``postgres_support.TcpProxy``), and connections are killed with ``pg_terminate_backend``.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from agentrunner_postgres import PostgresStateStore
from postgres_support import TcpProxy, connect, database_url, parts_settings, store_settings

from agentrunner.interfaces import StateConflict, StoreUnavailable
from agentrunner.records import AgentState, utcnow
from agentrunner.settings import load_settings
from agentrunner.testing.store_contract import T0, make_execution

PASSWORD = "pw-canary-3b9d1e"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start_error(settings) -> str:
    store = PostgresStateStore(settings)
    with pytest.raises(StoreUnavailable) as caught:
        await store.start()
    return str(caught.value)


# --- at start ------------------------------------------------------------------------------


async def test_a_refused_connection_names_the_host_variables_and_not_the_password():
    port = _closed_port()
    message = await _start_error(load_settings(environ={
        "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(port), "POSTGRES_PASSWORD": PASSWORD}, env_file=None))
    assert message == (f"cannot connect to PostgreSQL at 127.0.0.1:{port}/agentrunner (POSTGRES_HOST, POSTGRES_PORT): "
                       f"connection refused")


async def test_a_refused_database_url_is_named_without_its_password():
    port = _closed_port()
    message = await _start_error(load_settings(environ={
        "DATABASE_URL": f"postgresql://agentrunner:{PASSWORD}@127.0.0.1:{port}/app"}, env_file=None))
    assert message == f"cannot connect to PostgreSQL at 127.0.0.1:{port}/app (DATABASE_URL): connection refused"


async def test_an_unknown_database_names_postgres_db(postgres_server):
    message = await _start_error(parts_settings(postgres_server, "agentrunner_no_such_db",
                                                {"POSTGRES_PASSWORD": PASSWORD}))
    assert "(POSTGRES_DB)" in message and "agentrunner_no_such_db" in message and PASSWORD not in message


async def test_an_unknown_user_names_the_user_and_password_variables(postgres_server, postgres_database):
    database = urlsplit(postgres_database).path.lstrip("/")
    message = await _start_error(parts_settings(postgres_server, database, {
        "POSTGRES_USER": "agentrunner_no_such_role", "POSTGRES_PASSWORD": PASSWORD}))
    assert "(POSTGRES_USER, POSTGRES_PASSWORD)" in message and PASSWORD not in message


async def test_an_unanswering_server_times_out_after_the_pool_timeout(postgres_server):
    server = urlsplit(postgres_server)
    proxy = TcpProxy(server.hostname, server.port or 5432)
    proxy.frozen = True
    await proxy.start()
    try:
        began = time.monotonic()
        message = await _start_error(load_settings(environ={
            "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(proxy.port), "POSTGRES_POOL_TIMEOUT": "0.5"},
            env_file=None))
        assert time.monotonic() - began < 3
        assert message == (f"cannot connect to PostgreSQL at 127.0.0.1:{proxy.port}/agentrunner "
                           f"(POSTGRES_HOST, POSTGRES_PORT, POSTGRES_POOL_TIMEOUT): no answer within 0.5 s")
    finally:
        await proxy.stop()


async def test_without_a_host_start_says_what_to_set():
    message = await _start_error(load_settings(environ={"STATE_BACKEND": "postgres"}, env_file=None))
    assert "DATABASE_URL or POSTGRES_HOST" in message


async def test_a_store_that_is_not_started_is_unavailable(postgres_database):
    store = PostgresStateStore(store_settings(postgres_database))
    with pytest.raises(StoreUnavailable):
        await store.health()
    with pytest.raises(StoreUnavailable):
        await store.get_execution("x")


# --- while running ---------------------------------------------------------------------------


@pytest.fixture
async def proxied(postgres_server, postgres_database):
    """A started store whose one connection goes through a proxy to the real server."""
    server = urlsplit(postgres_server)
    proxy = TcpProxy(server.hostname, server.port or 5432)
    await proxy.start()
    url = database_url(postgres_database, urlsplit(postgres_database).path.lstrip("/"), host="127.0.0.1",
                       port=proxy.port)
    store = PostgresStateStore(store_settings(url, {
        "POSTGRES_MIN_POOL_SIZE": "1", "POSTGRES_MAX_POOL_SIZE": "1", "POSTGRES_POOL_MAX_OVERFLOW": "0",
        "POSTGRES_POOL_TIMEOUT": "1", "POSTGRES_STATEMENT_TIMEOUT": "500"}))
    await store.start()
    try:
        yield store, proxy
    finally:
        await store.stop()
        await proxy.stop()


async def test_a_server_that_goes_away_gives_store_unavailable_then_recovers(proxied):
    store, proxy = proxied
    execution = make_execution("outage")
    await store.create_execution(execution)
    await proxy.stop()
    for call in (store.health(), store.get_execution(execution.execution_id), store.create_execution(
            make_execution("outage")), store.update_execution(execution.execution_id, status="running")):
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await call
        assert time.monotonic() - began < 3
        assert f"127.0.0.1:{proxy.port}" in str(caught.value)
    await proxy.start()
    await store.health()
    assert await store.get_execution(execution.execution_id) == execution


async def test_a_server_that_stops_answering_gives_store_unavailable_in_bounded_time(proxied):
    store, proxy = proxied
    await store.health()
    proxy.frozen = True
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await store.get_state("anyone")
    # the statement timeout (0.5 s) plus the pool timeout (1 s): then the client gives up
    assert time.monotonic() - began < 4
    assert "did not answer" in str(caught.value)
    proxy.frozen = False
    await proxy.stop()  # the frozen connection is gone for good; new ones are forwarded again
    await proxy.start()
    assert await store.get_state("anyone") is None


async def test_killed_connections_are_replaced_and_the_next_operation_works(postgres_database):
    store = PostgresStateStore(store_settings(postgres_database, {"POSTGRES_MIN_POOL_SIZE": "3"}))
    await store.start()
    admin = await connect(postgres_database)
    try:
        execution = make_execution("killed")
        await store.create_execution(execution)
        for operation in range(4):
            killed = await admin.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'agentrunner' "
                "AND pid <> pg_backend_pid()) AS terminated")
            assert killed >= 1
            if operation == 0:
                assert await store.get_execution(execution.execution_id) == execution
            elif operation == 1:
                assert (await store.claim_execution(execution.execution_id, T0)).attempts == 1
            elif operation == 2:
                assert (await store.put_state(AgentState(agent_name="killed"))).version == 1
            else:
                await store.health()
        assert (await store.get_execution(execution.execution_id)).attempts == 1
    finally:
        await admin.close()
        await store.stop()


# --- a connection lost after the server did the work: the retry recognises it -------------------


async def test_a_create_whose_answer_is_lost_is_reported_created_once(proxied):
    store, proxy = proxied
    execution = make_execution("lost-answer", idempotency_key="k")
    proxy.cut_next_answer()
    assert await store.create_execution(execution) == (execution, True)
    assert proxy.cuts == 1
    page, _ = await store.list_executions(agent_name="lost-answer")
    assert page == [execution]


async def test_a_claim_whose_answer_is_lost_is_one_attempt(proxied):
    store, proxy = proxied
    execution = make_execution("lost-claim")
    await store.create_execution(execution)
    await store.claim_execution(execution.execution_id, T0)
    proxy.cut_next_answer()
    claimed = await store.claim_execution(execution.execution_id, T0 + timedelta(seconds=1))
    assert proxy.cuts == 1
    assert (claimed.attempts, claimed.started_at) == (2, T0 + timedelta(seconds=1))
    assert await store.get_execution(execution.execution_id) == claimed


async def test_a_compare_and_set_whose_answer_is_lost_still_reports_success(proxied):
    store, proxy = proxied
    execution = make_execution("lost-cas")
    await store.create_execution(execution)
    assert await store.update_execution(execution.execution_id, expect_status=["queued"], status="running")
    proxy.cut_next_answer()
    assert await store.update_execution(execution.execution_id, expect_status=["running"], status="completed",
                                        result={"ok": True}, completed_at=utcnow()) is True
    assert proxy.cuts == 1
    assert (await store.get_execution(execution.execution_id)).status == "completed"


async def test_a_state_write_whose_answer_is_lost_bumps_the_version_once(proxied):
    store, proxy = proxied
    first = await store.put_state(AgentState(agent_name="lost-state", state_data={"n": 1}))
    proxy.cut_next_answer()
    second = await store.put_state(AgentState(agent_name="lost-state", state_data={"n": 2}))
    assert proxy.cuts == 1 and (first.version, second.version) == (1, 2)
    proxy.cut_next_answer()
    third = await store.put_state(AgentState(agent_name="lost-state", state_data={"n": 3}), expect_version=2)
    assert proxy.cuts == 2 and third.version == 3
    assert await store.get_state("lost-state") == third
    with pytest.raises(StateConflict):
        await store.put_state(AgentState(agent_name="lost-state"), expect_version=2)


async def test_a_tick_claim_whose_answer_is_lost_is_still_won(proxied):
    store, proxy = proxied
    tick = T0.replace(microsecond=0)
    assert await store.claim_schedule_tick("lost-tick", tick - timedelta(minutes=1))
    proxy.cut_next_answer()
    assert await store.claim_schedule_tick("lost-tick", tick) is True
    assert proxy.cuts == 1
    assert await store.claim_schedule_tick("lost-tick", tick) is False
