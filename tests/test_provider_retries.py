"""Provider failures: the agent's retry_config is the one retry layer, Retry-After is honoured."""

from __future__ import annotations

import textwrap
import time

import pytest

import agentrunner
from agentrunner.interfaces import CompletionResponse, ProviderError, Usage
from agentrunner.orchestrator import RetryPolicy
from agentrunner.testing.platform import http_client, running_platform


class Failing:
    """Fails with the queued errors, one per call, then answers; records when it was called."""

    name = "failing"

    def __init__(self) -> None:
        self.errors: list[ProviderError] = []
        self.calls: list[float] = []
        self.configured_with = None
        self.closed = False

    def configure(self, settings):
        self.configured_with = settings

    async def aclose(self):
        self.closed = True

    async def complete(self, request):
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return CompletionResponse(text="fine", usage=Usage(2, 1), model="failing-1")


class Plugin:
    def __init__(self) -> None:
        self.provider = Failing()

    @agentrunner.hookimpl
    def register_providers(self, register):
        register(self.provider)


AGENT = textwrap.dedent("""\
    name: fragile
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {provider: failing, model: m}
    system_prompt: Try.
    retry_config: {max_retries: 2, retry_delay_seconds: 0.01, max_retry_delay: 0.05}
    """)


@pytest.fixture
def plugin():
    return Plugin()


@pytest.fixture
async def platform(tmp_path, plugin):
    async with running_platform(tmp_path, files={"fragile.yaml": AGENT}, plugins=[(plugin, "failing")]) as platform:
        yield platform


async def run(platform) -> dict:
    async with http_client(platform) as client:
        response = await client.post("/agents/fragile/tasks", json={"input": "go", "wait": 10})
        return await response.json()


async def test_retryable_errors_are_retried_and_the_answer_is_kept(platform, plugin):
    plugin.provider.errors = [ProviderError("failing: rate limited (429)", retryable=True, status=429),
                              ProviderError("failing: server error (503)", retryable=True, status=503)]
    execution = await run(platform)
    assert execution["status"] == "completed" and execution["result"] == "fine"
    assert len(plugin.provider.calls) == 3
    assert execution["attempts"] == 1  # retried inside the attempt, not as new task attempts
    assert execution["usage"] == {"input_tokens": 2, "output_tokens": 1, "model": "failing-1"}


async def test_retry_after_is_waited_for_even_beyond_the_agents_delay(platform, plugin):
    plugin.provider.errors = [ProviderError("failing: rate limited (429)", retryable=True, retry_after=0.3,
                                            status=429)]
    execution = await run(platform)
    assert execution["status"] == "completed"
    first, second = plugin.provider.calls
    assert second - first >= 0.3


async def test_errors_that_cannot_succeed_fail_at_once_and_are_dead_lettered(platform, plugin):
    plugin.provider.errors = [ProviderError("failing: authentication failed (401): bad key", status=401)]
    execution = await run(platform)
    assert execution["status"] == "failed"
    assert execution["error_message"] == "ProviderError: failing: authentication failed (401): bad key"
    assert len(plugin.provider.calls) == 1 and execution["attempts"] == 1
    letters = await platform.store.list_dead_letters()
    assert [letter.execution_id for letter in letters] == [execution["execution_id"]]


async def test_exhausted_retries_fail_without_a_second_layer_of_retries(platform, plugin):
    plugin.provider.errors = [ProviderError("failing: server error (500)", retryable=True, status=500)] * 10
    execution = await run(platform)
    assert execution["status"] == "failed" and "server error (500)" in execution["error_message"]
    # max_retries 2: three calls in all, not three task attempts of three calls each
    assert len(plugin.provider.calls) == 3 and execution["attempts"] == 1


async def test_providers_get_the_settings_before_any_request_and_are_closed_at_stop(tmp_path, plugin):
    async with running_platform(tmp_path, {"OPENAI_ORG_ID": "org-1"}, files={"fragile.yaml": AGENT},
                                plugins=[(plugin, "failing")]) as platform:
        assert plugin.provider.configured_with is platform.settings
        assert platform.settings.openai_org_id == "org-1"
        assert not plugin.provider.closed
    assert plugin.provider.closed


def test_backoff_is_exponential_capped_and_jittered_and_never_below_retry_after():
    policy = RetryPolicy(max_retries=5, retry_delay_seconds=1.0, backoff_multiplier=2.0, max_retry_delay=5.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    jittered = [policy.delay(3, jitter=True) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in jittered) and len(set(jittered)) > 100
    assert policy.delay(1, jitter=True, at_least=30.0) == 30.0
    flat = RetryPolicy(max_retries=3, retry_delay_seconds=1.5, exponential_backoff=False)
    assert [flat.delay(n) for n in (1, 2, 3)] == [1.5, 1.5, 1.5]
