"""The ``function`` tool type: a Python callable named ``package.module:callable``."""

from __future__ import annotations

import importlib.util
import re

import agentrunner

_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


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


@agentrunner.hookimpl
def register_tool_types(register):
    register(FunctionToolType())
