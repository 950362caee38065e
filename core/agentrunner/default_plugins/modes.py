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

    ``sequential``: each collaborator refines the previous output (no planning call).
    ``consensus``: collaborators answer independently; the coordinator reconciles.
    ``hierarchical``: the coordinator plans steps with its model, delegates, synthesises.
    """

    name = "collaborative"
    config_section = "collaborative_config"
    config_type = CollaborativeConfig

    async def execute(self, ctx):
        config: CollaborativeConfig = ctx.agent.collaborative_config or CollaborativeConfig()
        collaborators = list(config.preferred_collaborators)[: config.max_collaborators]
        task = task_text(ctx.task.input)
        if config.planning_strategy == "sequential":
            output = task
            for agent_name in collaborators:
                output = task_text(await ctx.submit(agent_name, output))
            return output
        if config.planning_strategy == "consensus":
            answers = await asyncio.gather(*(ctx.submit(a, task) for a in collaborators))
            listing = "\n\n".join(f"[{a}]\n{task_text(r)}" for a, r in zip(collaborators, answers, strict=True))
            prompt = f"Task:\n{task}\n\nIndependent answers:\n{listing}\n\nReconcile them into one answer."
            return (await ctx.complete([Message("user", prompt)])).text
        steps = await self._plan(ctx, config, collaborators, task)
        results = []
        for step in steps:
            results.append((step, task_text(await ctx.submit(step["agent"], step["instruction"]))))
        listing = "\n\n".join(f"[{s['agent']}: {s['instruction']}]\n{r}" for s, r in results)
        prompt = f"Task:\n{task}\n\nResults of the plan's steps:\n{listing}\n\nCombine them into the final answer."
        return (await ctx.complete([Message("user", prompt)])).text

    async def _plan(self, ctx, config: CollaborativeConfig, collaborators: list[str], task: str):
        """Ask the coordinator's model for a JSON plan; fall back to one step per collaborator."""
        prompt = (
            f"Split this task into at most {config.max_plan_steps} steps for these agents: "
            f"{', '.join(collaborators)}. Answer with JSON only: "
            '{"steps": [{"agent": "<name>", "instruction": "<what to do>"}]}\n\nTask:\n' + task
        )
        text = (await ctx.complete([Message("user", prompt)])).text
        try:
            steps = [
                {"agent": str(s["agent"]), "instruction": str(s["instruction"])}
                for s in json.loads(text)["steps"]
                if s.get("agent") in collaborators
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            steps = []
        if len({s["agent"] for s in steps}) < config.min_collaborators:
            steps = [{"agent": a, "instruction": task} for a in collaborators]
        return steps[: config.max_plan_steps]


@agentrunner.hookimpl
def register_execution_modes(register):
    for mode in (AutonomousMode(), ContinuousMode(), CollaborativeMode(), ScheduledMode()):
        register(mode)
