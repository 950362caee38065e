"""The ``function`` tool type: a Python callable named ``package.module:callable``.

Its JSON Schema comes from the signature and annotations (``str``, ``int``,
``float``, ``bool``, ``list[...]``, ``dict``, ``Literal[...]``, ``X | None``,
``Enum``); parameters without a default are required. Arguments are checked
against that schema before the call. A sync callable runs on the platform's worker
threads (``ORCHESTRATOR_WORKER_THREADS``) so it never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import importlib
import importlib.util
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import agentrunner
from agentrunner.interfaces import Tool, ToolDefinition, ToolError
from agentrunner.tool_schema import check_arguments

_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def resolve(target: str) -> Callable[..., Any]:
    """The callable named ``package.module:attribute.path``."""
    module_name, _, path = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in path.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise TypeError(f"{target} is not callable")
    return value


def annotation_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation; anything unknown accepts any value."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [annotation_schema(arg) for arg in args if arg is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        if type(None) in args:
            schema = {"anyOf": [schema, {"type": "null"}]} if schema else {}
        return schema
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        schema: dict[str, Any] = {"type": "array"}
        if args and args[-1] is not Ellipsis:
            schema["items"] = annotation_schema(args[0])
        return schema
    if origin in (dict, Mapping) or origin is typing.Mapping:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = annotation_schema(args[1])
        return schema
    if typing.is_typeddict(annotation):
        hints = typing.get_type_hints(annotation)
        return {"type": "object", "properties": {name: annotation_schema(hint) for name, hint in hints.items()},
                "required": sorted(annotation.__required_keys__)}
    return {}


def signature_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of a callable's keyword arguments (``*args``/``**kwargs`` are not offered)."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):  # an annotation that does not resolve: use what is written
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD,
                              inspect.Parameter.POSITIONAL_ONLY):
            continue
        schema = dict(annotation_schema(hints.get(name, parameter.annotation)))
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
        elif _json_value(parameter.default):
            schema["default"] = parameter.default
        properties[name] = schema
    result: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        result["required"] = required
    return result


def _json_value(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _description(tool: Any, fn: Callable[..., Any]) -> str:
    if tool.description:
        return tool.description
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip() or f"the Python function {tool.function}"


class FunctionToolType:
    """Runs a sync or async Python callable; its parameters come from the signature."""

    name = "function"
    required_fields = ("function",)

    def validate(self, tool) -> list[tuple[str, str]]:
        target = tool.function or ""
        if not _TARGET.match(target):
            return [("function", f"must look like package.module:callable (got {target!r})")]
        module_name = target.partition(":")[0]
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return [("function", f"module {module_name!r} cannot be found on the Python path")]
        return []

    async def open(self, tool) -> list[Tool]:
        try:
            fn = resolve(tool.function)
        except (ImportError, AttributeError, TypeError) as exc:
            raise ToolError(f"cannot load {tool.function}: {exc}") from None
        schema = tool.parameters or signature_schema(fn)
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

        async def call(arguments: Mapping[str, Any]) -> Any:
            check_arguments(schema, arguments)
            if is_async:
                return await fn(**arguments)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(fn, **arguments))

        definition = ToolDefinition(name=tool.name, description=_description(tool, fn), parameters=schema)
        return [Tool(definition=definition, call=call, timeout=tool.timeout)]


@agentrunner.hookimpl
def register_tool_types(register):
    register(FunctionToolType())
