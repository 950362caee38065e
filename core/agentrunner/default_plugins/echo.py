"""The built-in ``echo`` provider: answers with the last user message, no network.

It exists so the platform, its examples and its tests run without an API key.
Every ``llm_config`` field is accepted and has no effect on the answer.
"""

from __future__ import annotations

import attrs

import agentrunner
from agentrunner.interfaces import CompletionRequest, CompletionResponse, Usage
from agentrunner.schema import LLMConfig


def _words(text: str) -> int:
    return len(text.split())


class EchoProvider:
    """Replies with the text of the last ``user`` message; usage counts whitespace-separated words."""

    name = "echo"
    supported_options = frozenset(f.name for f in attrs.fields(LLMConfig) if f.name != "explicit_fields")

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        prompt_words = _words(request.system_prompt) + sum(_words(m.content) for m in request.messages)
        return CompletionResponse(
            text=last_user,
            usage=Usage(input_tokens=prompt_words, output_tokens=_words(last_user)),
            model=request.llm_config.model or "echo",
        )

    async def stream(self, request: CompletionRequest):
        """Yield the answer word by word, as a real provider streams deltas, then the whole answer."""
        response = await self.complete(request)
        words = response.text.split(" ")
        for index, word in enumerate(words):
            yield word if index == len(words) - 1 else word + " "
        yield response


@agentrunner.hookimpl
def register_providers(register):
    register(EchoProvider())
