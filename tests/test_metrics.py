"""/metrics: the metrics of DESIGN.md, in a format Prometheus parses, counting what really happened."""

from __future__ import annotations

import textwrap

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agentrunner.testing.platform import http_client, running_platform
from agentrunner.web.server import start_services

AGENTS = {
    "echoer.yaml": textwrap.dedent("""\
        name: echoer
        agent_type: assistant
        execution_mode: autonomous
        llm_config: {temperature: 0.5, model: echo-1}
        system_prompt: Echo.
        tools:
          - {name: word_count, type: function, function: "agentrunner.example_tools:word_count"}
        """),
}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_are_served_and_count_tasks_tokens_tools_and_requests(tmp_path):
    async with running_platform(tmp_path, {"PROMETHEUS_ENABLED": "true"}, files=AGENTS) as platform:
        async with http_client(platform) as client:
            for text in ("one two", "three"):
                await client.post("/agents/echoer/tasks", json={"input": text, "wait": 5})
            await client.post("/agents/echoer/tasks", json={"input": '/call word_count {"text": "a b c"}', "wait": 5})
            await client.get("/agents/nobody")
        runner = await start_services(platform, ["state"], ports={"state": 0, "metrics": 0})
        try:
            url = dict(runner.urls)["Metrics"]
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                found = samples(await response.text())
        finally:
            await runner.close()
    assert found[("agentrunner_tasks_submitted_total", (("agent", "echoer"),))] == 3
    assert found[("agentrunner_executions_total", (("agent", "echoer"), ("status", "completed")))] == 3
    assert found[("agentrunner_execution_duration_seconds_count", (("agent", "echoer"),))] == 3
    assert found[("agentrunner_llm_tokens_total", (("direction", "output"), ("model", "echo-1"),
                                                   ("provider", "echo")))] >= 3
    assert found[("agentrunner_tool_calls_total", (("outcome", "ok"), ("tool", "word_count")))] == 1
    assert found[("agentrunner_http_requests_total", (("service", "AgentOrchestrator"), ("status", "200")))] == 3
    assert found[("agentrunner_http_requests_total", (("service", "AgentOrchestrator"), ("status", "404")))] == 1
    assert found[("agentrunner_queue_depth", (("queue", "agentrunner.tasks.autonomous"),))] == 0
    assert found[("agentrunner_dlq_size", ())] == 0


def test_duration_buckets_count_a_value_on_a_bound_in_that_bucket_and_are_cumulative():
    from agentrunner.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.005, 0.0051, 0.3, 700.0):
        metrics.execution_ended("timed", "completed", seconds)
    found = samples(metrics.exposition().decode())

    def bucket(le: str) -> float:
        return found[("agentrunner_execution_duration_seconds_bucket", (("agent", "timed"), ("le", le)))]

    assert bucket("0.005") == 1  # le: less than or equal
    assert bucket("0.01") == 2
    assert bucket("0.25") == 2 and bucket("0.5") == 3
    assert bucket("600.0") == 3 and bucket("+Inf") == 4
    assert found[("agentrunner_execution_duration_seconds_count", (("agent", "timed"),))] == 4
    assert abs(found[("agentrunner_execution_duration_seconds_sum", (("agent", "timed"),))] - 700.3101) < 1e-9
    assert found[("agentrunner_executions_total", (("agent", "timed"), ("status", "completed")))] == 4
