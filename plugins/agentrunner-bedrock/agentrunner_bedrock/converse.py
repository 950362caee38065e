"""The common representation ↔ the Bedrock Converse API: request parameters, answers and stream events."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from agentrunner.interfaces import CompletionRequest, CompletionResponse, Message, ToolCall, ToolDefinition, Usage

#: Geographic prefixes of cross-region inference profiles (``us.anthropic.claude-…``).
_PROFILE_PREFIXES = frozenset({"us", "us-gov", "eu", "apac", "ap", "ca", "jp", "au", "global"})


def model_family(model: str) -> tuple[str, str]:
    """``(vendor, base model id)`` of a model id, inference profile id or ARN; vendor is "" when unknown.

    ``us.anthropic.claude-3-haiku-20240307-v1:0`` → ``("anthropic", "anthropic.claude-3-haiku-…")``;
    a provisioned-model ARN names no vendor.
    """
    base = model.rsplit("/", 1)[-1]
    vendor, dot, rest = base.partition(".")
    if dot and vendor in _PROFILE_PREFIXES and "." in rest:
        base = rest
        vendor, dot, _ = rest.partition(".")
    return (vendor if dot else ""), base


def converse_params(request: CompletionRequest) -> dict[str, Any]:
    """The keyword arguments of ``converse`` / ``converse_stream`` for ``request``.

    ``maxTokens``, ``temperature`` and ``topP`` are always sent (schema defaults included);
    ``top_k`` only when set, as an Anthropic request field.
    """
    llm = request.llm_config
    messages, system = converse_messages(request.messages)
    if request.system_prompt:
        system.insert(0, {"text": request.system_prompt})
    params: dict[str, Any] = {
        "modelId": llm.model,
        "messages": messages,
        "inferenceConfig": {"maxTokens": llm.max_tokens, "temperature": llm.temperature, "topP": llm.top_p},
    }
    if system:
        params["system"] = system
    if request.tools:
        params["toolConfig"] = {"tools": [tool_spec(tool) for tool in request.tools]}
    if llm.top_k is not None:
        params["additionalModelRequestFields"] = {"top_k": llm.top_k}
    return params


def tool_spec(tool: ToolDefinition) -> dict[str, Any]:
    """A ``toolSpec`` entry of ``toolConfig.tools``."""
    spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": _plain(tool.parameters)}}
    if tool.description:  # Bedrock refuses an empty description
        spec["description"] = tool.description
    return {"toolSpec": spec}


def converse_messages(messages: Sequence[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Converse ``messages`` and extra ``system`` blocks (from ``system`` messages).

    Converse wants user and assistant turns to alternate, so consecutive messages of one
    role (several tool results, a tool result followed by a user message) become one turn.
    """
    turns: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append({"text": message.content})
            continue
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns, system


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result = {
            "toolUseId": message.tool_call_id or "",
            "content": [{"text": message.content}],
            "status": "error" if message.is_error else "success",
        }
        return "user", [{"toolResult": result}]
    if message.role == "assistant":
        blocks: list[dict[str, Any]] = [{"text": message.content}] if message.content else []
        blocks.extend(
            {"toolUse": {"toolUseId": call.id, "name": call.name, "input": _plain(call.arguments)}}
            for call in message.tool_calls
        )
        return "assistant", blocks
    if message.role == "user":
        return "user", [{"text": message.content}]
    raise ValueError(f"a message with role {message.role!r} cannot be sent (user, assistant, tool or system)")


def _plain(value: Any) -> Any:
    """``value`` with mappings and sequences turned into dicts and lists, as botocore serialises documents."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def tool_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict; anything that is not a JSON object is kept as ``{"_raw": text}``."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return {"_raw": raw}
        return value if isinstance(value, dict) else {"_raw": raw}
    if raw is None:
        return {}
    return {"_raw": json.dumps(raw)}


def usage_of(data: Mapping[str, Any] | None) -> Usage:
    """``Usage`` from a Converse ``usage`` object."""
    data = data or {}
    return Usage(input_tokens=int(data.get("inputTokens") or 0), output_tokens=int(data.get("outputTokens") or 0))


def parse_answer(answer: Mapping[str, Any], model: str) -> CompletionResponse:
    """The ``CompletionResponse`` of a ``converse`` answer."""
    blocks = ((answer.get("output") or {}).get("message") or {}).get("content") or []
    text = "".join(block["text"] for block in blocks if isinstance(block.get("text"), str))
    calls = tuple(
        ToolCall(id=use.get("toolUseId", ""), name=use.get("name", ""), arguments=tool_arguments(use.get("input")))
        for use in (block["toolUse"] for block in blocks if "toolUse" in block)
    )
    return CompletionResponse(text=text, tool_calls=calls, usage=usage_of(answer.get("usage")), model=model,
                              finish_reason=answer.get("stopReason") or "end_turn")


@attrs.define
class _PendingToolUse:
    id: str
    name: str
    input: list[str] = attrs.field(factory=list)


@attrs.define
class StreamAssembler:
    """Collects ``converse_stream`` events into the whole answer; ``feed`` returns each text delta."""

    model: str
    text: list[str] = attrs.field(factory=list)
    tool_uses: dict[int, _PendingToolUse] = attrs.field(factory=dict)
    usage: Usage = attrs.field(factory=Usage)
    stop_reason: str = "end_turn"

    def feed(self, event: Mapping[str, Any]) -> str | None:
        """Take one event; the text it adds to the answer, if any."""
        if "contentBlockStart" in event:
            start = event["contentBlockStart"]
            use = (start.get("start") or {}).get("toolUse")
            if use is not None:
                self.tool_uses[start.get("contentBlockIndex", len(self.tool_uses))] = _PendingToolUse(
                    id=use.get("toolUseId", ""), name=use.get("name", ""))
        elif "contentBlockDelta" in event:
            body = event["contentBlockDelta"]
            delta = body.get("delta") or {}
            if isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
                return delta["text"]
            if "toolUse" in delta:
                index = body.get("contentBlockIndex", 0)
                pending = self.tool_uses.setdefault(index, _PendingToolUse(id="", name=""))
                pending.input.append(str((delta["toolUse"] or {}).get("input") or ""))
        elif "messageStop" in event:
            self.stop_reason = event["messageStop"].get("stopReason") or self.stop_reason
        elif "metadata" in event:
            self.usage = usage_of(event["metadata"].get("usage"))
        return None

    def response(self) -> CompletionResponse:
        """The whole answer, once the stream has ended."""
        calls = tuple(
            ToolCall(id=use.id, name=use.name, arguments=tool_arguments("".join(use.input)))
            for _, use in sorted(self.tool_uses.items())
        )
        return CompletionResponse(text="".join(self.text), tool_calls=calls, usage=self.usage, model=self.model,
                                  finish_reason=self.stop_reason)
