"""What a gateway plugin (Slack) builds on: its routes on the SlackGateway port, events that become
tasks with the text as input, retried deliveries that start nothing twice, questions for a human."""

from __future__ import annotations

import textwrap

from aiohttp import web

import agentrunner
from agentrunner.testing.bus_contract import eventually
from agentrunner.testing.platform import http_client, running_platform

API_KEY = "g" * 40


class FakeGateway:
    """Receives `POST /fake/hook` (authenticated by its own means) and publishes it as an event."""

    name = "fake"
    public_paths = ("/fake/hook",)

    def __init__(self) -> None:
        self.platform = None
        self.stopped = False

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/fake/hook", self.hook)

    async def start(self, platform) -> None:
        self.platform = platform

    async def stop(self) -> None:
        self.stopped = True

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self.platform.orchestrator.publish_event(
            "fake.message", {"text": body["text"], "channel": "C1"}, task_input=body["text"],
            idempotency_key=f"fake:{body['event_id']}")
        return web.json_response({"ok": True})


class Plugin:
    def __init__(self) -> None:
        self.gateway = FakeGateway()

    @agentrunner.hookimpl
    def register_gateways(self, register):
        register(self.gateway)


LISTENER = textwrap.dedent("""\
    name: listener
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {temperature: 0.5}
    system_prompt: Listen.
    event_subscriptions: ["fake.*"]
    """)


async def test_a_gateway_route_turns_deliveries_into_tasks_once(tmp_path):
    plugin = Plugin()
    environ = {"API_AUTH_ENABLED": "true", "API_KEY": API_KEY}
    async with running_platform(tmp_path, environ, files={"listener.yaml": LISTENER},
                                plugins=[(plugin, "fake-gateway")]) as platform:
        async with http_client(platform, "gateway") as client:
            assert plugin.gateway.platform is platform  # started with the service
            for _ in range(3):  # the sender retries the same delivery
                response = await client.post("/fake/hook", json={"text": "hello there", "event_id": "Ev1"})
                assert response.status == 200  # no API key: the gateway authenticates its own path
            response = await client.post("/fake/hook", json={"text": "second", "event_id": "Ev2"})
            assert response.status == 200
            assert (await client.get("/health")).status == 200
            other = await client.get("/fake/other")
            assert other.status == 401  # every other path still needs the key

            async def executions():
                page, _ = await platform.store.list_executions(agent_name="listener")
                return page

            await eventually(lambda: platform.orchestrator.tasks_handled >= 2)
            page = await executions()
            assert sorted(e.input for e in page) == ["hello there", "second"]  # the text, once each
            first = next(e for e in page if e.input == "hello there")
            assert first.data["event"] == {"text": "hello there", "channel": "C1"}
            assert first.idempotency_key == "event:fake:Ev1"
    assert plugin.gateway.stopped


async def test_a_question_for_a_human_is_published(tmp_path):
    seen = []

    class Asker:
        name = "asker"

        async def execute(self, ctx):
            return await ctx.ask("Which region?")

    class Modes:
        @agentrunner.hookimpl
        def register_execution_modes(self, register):
            register(Asker())

    agent = LISTENER.replace("name: listener", "name: curious").replace("execution_mode: autonomous",
                                                                          "execution_mode: asker")
    async with running_platform(tmp_path, files={"curious.yaml": agent}, plugins=[(Modes(), "asker")]) as platform:

        async def record(event):
            seen.append(event)

        await platform.bus.subscribe("test.questions", ["agent.execution.awaiting_input"], record)
        execution, _ = await platform.orchestrator.submit("curious", "go")
        await eventually(lambda: seen)
        assert seen[0].payload["question"] == "Which region?"
        assert seen[0].payload["execution_id"] == execution.execution_id
        await platform.orchestrator.provide_input(execution.execution_id, "EMEA")
        finished = await platform.orchestrator.wait(execution.execution_id, 5)
        assert finished.status == "completed" and finished.result == "EMEA"
