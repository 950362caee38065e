"""The four built-in execution modes of the reference.

Each is registered through ``register_execution_modes`` exactly as a
third-party mode would be, and declares the YAML section it owns.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import agentrunner
from agentrunner.interfaces import Message
from agentrunner.schema import CollaborativeConfig, ContinuousConfig, ScheduleConfig


def task_text(value: Any) -> str:
    """A task's input as the text of a user message (JSON for structured input)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class AutonomousMode:
    """Stateless: one task, one answer, any number in parallel."""

    name = "autonomous"

    async def execute(self, ctx):
        return (await ctx.complete([Message("user", task_text(ctx.task.input))])).text


class ScheduledMode:
    """Time-triggered runs: the task's input is the schedule's ``task_data``; stateless by default."""

    name = "scheduled"
    config_section = "schedule_config"
    config_type = ScheduleConfig
    config_required = True

    async def execute(self, ctx):
        return (await ctx.complete([Message("user", task_text(ctx.task.input))])).text


class ContinuousMode:
    """Stateful: the conversation history lives in the agent's persistent state.

    ``max_conversation_history`` counts turns (a user message and the reply);
    with ``summarize`` the dropped turns are condensed by the agent's own model
    into a summary kept at the head of the history (not counted as a turn).
    """

    name = "continuous"
    config_section = "continuous_config"
    config_type = ContinuousConfig

    async def execute(self, ctx):
        config: ContinuousConfig = ctx.agent.continuous_config or ContinuousConfig()
        turns: list[dict[str, str]] = list(ctx.state.get("conversation_history", []))
        summary: str = ctx.state.get("conversation_summary", "")
        messages = []
        if summary:
            messages.append(Message("user", f"Summary of the earlier conversation:\n{summary}"))
            messages.append(Message("assistant", "Understood."))
        for turn in turns:
            messages.append(Message("user", turn["user"]))
            messages.append(Message("assistant", turn["assistant"]))
        user_text = task_text(ctx.task.input)
        messages.append(Message("user", user_text))
        answer = (await ctx.complete(messages)).text
        turns.append({"user": user_text, "assistant": answer})
        turns, summary = await self._prune(ctx, config, turns, summary)
        ctx.state["conversation_history"] = turns
        if summary:
            ctx.state["conversation_summary"] = summary
        return answer

    async def _prune(self, ctx, config: ContinuousConfig, turns, summary):
        excess = len(turns) - config.max_conversation_history
        if excess <= 0:
            return turns, summary
        dropped, kept = turns[:excess], turns[excess:]
        if config.conversation_pruning_strategy != "summarize":
            return kept, summary
        transcript = "\n".join(f"User: {t['user']}\nAssistant: {t['assistant']}" for t in dropped)
        request = (
            "Condense this conversation into a short summary that keeps every fact needed later.\n"
            + (f"Earlier summary:\n{summary}\n" if summary else "")
            + transcript
        )
        try:
            summary = (await ctx.complete([Message("user", request)])).text
        except Exception:  # a failed summary must not let the history grow: trim instead
            pass
        return kept, summary


class CollaborativeMode:
    """A coordinator that splits a task over collaborator agents and combines their results.

    Collaborators are the ``preferred_collaborators`` first, then the other loaded agents,
    at most ``max_collaborators``. ``sequential``: each collaborator refines the previous
    output (no planning call). ``consensus``: collaborators answer independently; the
    coordinator reconciles. ``hierarchical``: the coordinator's model plans at most
    ``max_plan_steps`` steps over at least ``min_collaborators`` agents (a JSON answer),
    may first ask a human a question (``allow_human_clarification``: the execution waits
    in ``awaiting_input``), delegates, and synthesises. The plan and every step's result
    are kept in the execution's ``details``.
    """

    name = "collaborative"
    config_section = "collaborative_config"
    config_type = CollaborativeConfig
    #: questions the coordinator may ask a human before it plans
    MAX_QUESTIONS = 3

    async def execute(self, ctx):
        config: CollaborativeConfig = ctx.agent.collaborative_config or CollaborativeConfig()
        collaborators = self._collaborators(ctx, config)
        task = task_text(ctx.task.input)
        ctx.details["strategy"] = config.planning_strategy
        ctx.details["collaborators"] = collaborators
        if config.planning_strategy == "sequential":
            output = task
            for agent_name in collaborators:
                output = task_text(await self._step(ctx, agent_name, output))
            return output
        if config.planning_strategy == "consensus":
            answers = await asyncio.gather(*(self._step(ctx, a, task) for a in collaborators))
            listing = "\n\n".join(f"[{a}]\n{task_text(r)}" for a, r in zip(collaborators, answers, strict=True))
            prompt = f"Task:\n{task}\n\nIndependent answers:\n{listing}\n\nReconcile them into one answer."
            return (await ctx.complete([Message("user", prompt)])).text
        steps = await self._plan(ctx, config, collaborators, task)
        ctx.details["plan"] = steps
        results = []
        for step in steps:
            results.append((step, task_text(await self._step(ctx, step["agent"], step["instruction"]))))
        listing = "\n\n".join(f"[{s['agent']}: {s['instruction']}]\n{r}" for s, r in results)
        prompt = f"Task:\n{task}\n\nResults of the plan's steps:\n{listing}\n\nCombine them into the final answer."
        return (await ctx.complete([Message("user", prompt)])).text

    @staticmethod
    def _collaborators(ctx, config: CollaborativeConfig) -> list[str]:
        others = [name for name in ctx.agents() if name != ctx.agent.name and name not in
                  config.preferred_collaborators]
        return [*config.preferred_collaborators, *others][: config.max_collaborators]

    @staticmethod
    async def _step(ctx, agent_name: str, instruction: str):
        """Run one collaborator and keep its result on the record (also when it fails)."""
        record = {"agent": agent_name, "instruction": instruction}
        ctx.details.setdefault("steps", []).append(record)
        try:
            result = await ctx.submit(agent_name, instruction)
        except Exception as exc:
            record["error"] = str(exc)
            raise
        record["result"] = result
        return result

    async def _plan(self, ctx, config: CollaborativeConfig, collaborators: list[str], task: str):
        """Ask the coordinator's model for a JSON plan (or a question for a human first); fall back to
        one step per collaborator when the answer is not a usable plan."""
        clarifications: list[tuple[str, str]] = []
        while True:
            prompt = (
                f"Split this task into at most {config.max_plan_steps} steps, using at least "
                f"{config.min_collaborators} of these agents: {', '.join(collaborators)}. Answer with JSON only: "
                '{"steps": [{"agent": "<name>", "instruction": "<what to do>"}]}'
                + (' — or, if the task is too unclear to plan, {"question": "<what to ask the user>"}'
                   if config.allow_human_clarification and len(clarifications) < self.MAX_QUESTIONS else "")
                + "\n\nTask:\n" + task
                + "".join(f"\n\nYou asked: {q}\nThe user answered: {a}" for q, a in clarifications)
            )
            text = (await ctx.complete([Message("user", prompt)], response_format={"type": "json_object"})).text
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            question = answer.get("question") if isinstance(answer, dict) else None
            if (isinstance(question, str) and question.strip() and config.allow_human_clarification
                    and len(clarifications) < self.MAX_QUESTIONS):
                reply = await ctx.ask(question.strip())
                clarifications.append((question.strip(), task_text(reply)))
                continue
            break
        try:
            steps = [
                {"agent": str(s["agent"]), "instruction": str(s["instruction"])}
                for s in answer["steps"]
                if s.get("agent") in collaborators
            ]
        except (KeyError, TypeError, AttributeError):
            steps = []
        if len({s["agent"] for s in steps}) < min(config.min_collaborators, len(collaborators)):
            steps = [{"agent": a, "instruction": task} for a in collaborators]
        if clarifications:
            ctx.details["clarifications"] = [{"question": q, "answer": a} for q, a in clarifications]
        return steps[: config.max_plan_steps]


@agentrunner.hookimpl
def register_execution_modes(register):
    for mode in (AutonomousMode(), ContinuousMode(), CollaborativeMode(), ScheduledMode()):
        register(mode)
