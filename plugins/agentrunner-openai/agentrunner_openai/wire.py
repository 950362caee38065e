"""Translation between agentrunner's common representation and the Chat Completions wire format.

Pure functions on plain values: no SDK import here, so they are cheap to import and
easy to read next to the API reference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ToolCall, ToolDefinition, Usage

#: Where an argument string the model produced is kept when it is not a JSON object.
RAW_ARGUMENTS = "_raw"


def plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list, as the SDK's JSON encoder wants."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def request_body(request: CompletionRequest) -> dict[str, Any]:
    """The keyword arguments of ``chat.completions.create`` for ``request`` (without streaming ones).

    The reference's fields are always sent, defaults included, so the model behaves as the
    agent's YAML (or the schema default) says and not as the server's own default would;
    ``response_format`` and ``seed`` only when set.
    """
    llm = request.llm_config
    body: dict[str, Any] = {
        "model": llm.model,
        "messages": chat_messages(request.system_prompt, request.messages),
        "temperature": llm.temperature,
        "max_tokens": llm.max_tokens,
        "top_p": llm.top_p,
        "frequency_penalty": llm.frequency_penalty,
        "presence_penalty": llm.presence_penalty,
    }
    if llm.response_format is not None:
        body["response_format"] = plain(llm.response_format)
    if llm.seed is not None:
        body["seed"] = llm.seed
    if request.tools:
        body["tools"] = [tool_definition(tool) for tool in request.tools]
    return body


def chat_messages(system_prompt: str, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The system prompt as the first ``system`` message, then the conversation in OpenAI's shape."""
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for message in messages:
        if message.role == "tool":
            content = f"Error: {message.content}" if message.is_error else message.content
            out.append({"role": "tool", "tool_call_id": message.tool_call_id or "", "content": content})
        elif message.role == "assistant" and message.tool_calls:
            out.append({
                "role": "assistant",
                "content": message.content or None,
                "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": arguments_text(call.arguments)}}
                    for call in message.tool_calls
                ],
            })
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def tool_definition(tool: ToolDefinition) -> dict[str, Any]:
    """A tool as a Chat Completions ``function`` tool."""
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": plain(tool.parameters)},
    }


def arguments_text(arguments: Mapping[str, Any]) -> str:
    """Arguments as the JSON string OpenAI expects; the model's own text when it was not valid JSON,
    so the conversation shows the model exactly what it sent."""
    if set(arguments) == {RAW_ARGUMENTS} and isinstance(arguments[RAW_ARGUMENTS], str):
        return arguments[RAW_ARGUMENTS]
    return json.dumps(plain(arguments), ensure_ascii=False)


def parse_arguments(text: str | None) -> dict[str, Any]:
    """The model's argument string as a dict; anything but a JSON object is kept under ``_raw``
    so the tool layer can tell the model what was wrong."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {RAW_ARGUMENTS: text}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: text}


def usage_of(usage: Any) -> Usage:
    """Token usage from a ``CompletionUsage`` (servers that report none give zero)."""
    if usage is None:
        return Usage()
    return Usage(input_tokens=usage.prompt_tokens or 0, output_tokens=usage.completion_tokens or 0)


def completion_response(completion: Any, requested_model: str) -> CompletionResponse:
    """A ``ChatCompletion`` in the common representation."""
    choices = completion.choices or []
    message = choices[0].message if choices else None
    text = ""
    calls: tuple[ToolCall, ...] = ()
    if message is not None:
        text = message.content or getattr(message, "refusal", None) or ""
        calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=parse_arguments(call.function.arguments))
            for call in message.tool_calls or ()
            if getattr(call, "function", None) is not None
        )
    return CompletionResponse(
        text=text,
        tool_calls=calls,
        usage=usage_of(completion.usage),
        model=completion.model or requested_model,
        finish_reason=(choices[0].finish_reason if choices else None) or "stop",
    )


class StreamAssembler:
    """Collects ``ChatCompletionChunk``s into the whole answer: text, tool calls by index, usage."""

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.text: list[str] = []
        self.finish_reason = "stop"
        self.usage = Usage()
        self.chunks = 0
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> str:
        """Take one chunk; return its text delta ("" when it carries none).

        Events that are not chunks (no ``choices``) are ignored, and not counted in ``chunks``."""
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            return ""
        self.chunks += 1
        if getattr(chunk, "model", None):
            self.model = chunk.model
        if getattr(chunk, "usage", None) is not None:
            self.usage = usage_of(chunk.usage)
        delta_text = ""
        for choice in choices:
            if choice.index not in (0, None):
                continue
            delta = choice.delta
            if delta is not None:
                piece = delta.content or getattr(delta, "refusal", None)
                if piece:
                    delta_text += piece
                for call in delta.tool_calls or ():
                    self._add_call(call)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if delta_text:
            self.text.append(delta_text)
        return delta_text

    def _add_call(self, call: Any) -> None:
        # The first delta of a call carries its id and name; the arguments arrive in pieces.
        entry = self._calls.setdefault(call.index or 0, {"id": "", "name": "", "arguments": ""})
        if call.id:
            entry["id"] = call.id
        function = call.function
        if function is not None:
            if function.name and not entry["name"]:
                entry["name"] = function.name
            if function.arguments:
                entry["arguments"] += function.arguments

    def response(self) -> CompletionResponse:
        """The whole answer once the stream has ended."""
        calls = tuple(
            ToolCall(id=entry["id"], name=entry["name"], arguments=parse_arguments(entry["arguments"]))
            for _, entry in sorted(self._calls.items())
        )
        return CompletionResponse(text="".join(self.text), tool_calls=calls, usage=self.usage, model=self.model,
                                  finish_reason=self.finish_reason)
