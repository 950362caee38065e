"""The ``review`` execution mode: the agent drafts an answer, critiques it and revises it.

An example of a custom mode, written against the public ``ctx`` API only (see
docs/custom-modes.md in the agentrunner repository):

- ``ctx.complete(messages)`` asks the agent's own model (with its retry policy and tools);
- ``ctx.details`` is kept on the execution record, here every draft and critique;
- ``ctx.agent.mode_config`` is the agent's ``review_config`` section, validated by agentrunner
  like the built-in ones (a wrong type or an unknown field names the file and field).
"""

from __future__ import annotations

import attrs

import agentrunner
from agentrunner.interfaces import Message
from agentrunner.schema import at_least, checked


@attrs.frozen
class ReviewConfig:
    """``review_config``: how many critique-and-revise rounds follow the first draft."""

    rounds: int = attrs.field(default=1, **checked(at_least(0)))
    criteria: str = "correctness, clarity and brevity"


class ReviewMode:
    """Draft, then ``rounds`` times: critique the draft against ``criteria`` and revise it."""

    name = "review"
    config_section = "review_config"
    config_type = ReviewConfig
    uses_state = False  # stateless: tasks run in parallel, nothing is kept between them

    async def execute(self, ctx):
        config: ReviewConfig = ctx.agent.mode_config or ReviewConfig()
        task = ctx.task.input if isinstance(ctx.task.input, str) else str(ctx.task.input)
        draft = (await ctx.complete([Message("user", task)])).text
        ctx.details["drafts"] = [draft]
        ctx.details["critiques"] = []
        for _ in range(config.rounds):
            critique = (await ctx.complete([
                Message("user", f"Critique this answer to the task for {config.criteria}.\n\n"
                                f"Task:\n{task}\n\nAnswer:\n{draft}")])).text
            draft = (await ctx.complete([
                Message("user", f"Revise the answer using the critique. Reply with the new answer only.\n\n"
                                f"Task:\n{task}\n\nAnswer:\n{draft}\n\nCritique:\n{critique}")])).text
            ctx.details["critiques"].append(critique)
            ctx.details["drafts"].append(draft)
        return draft


@agentrunner.hookimpl
def register_execution_modes(register):
    register(ReviewMode())
