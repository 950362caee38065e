"""Checking a model's tool arguments against the tool's JSON Schema, before the tool runs.

A model's arguments are untrusted input: a wrong one goes back to the model as an
error result that names the field (``arguments.city: 'x' is not of type 'integer'``),
so it can correct itself, and the tool never sees it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from agentrunner.interfaces import ToolError

# jsonschema is imported when a schema is first checked: loading the plugins stays fast.


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or None."""
    import jsonschema

    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = ".".join(str(part) for part in exc.path)
        return f"{where + ': ' if where else ''}{exc.message}"
    return None


def check_arguments(schema: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> None:
    """Raise ``ToolError`` naming the first argument that does not fit ``schema``."""
    import jsonschema

    if "_raw" in arguments and len(arguments) == 1:
        raise ToolError(f"the arguments are not a JSON object: {str(arguments['_raw'])[:200]!r}")
    if not schema:
        return
    validator = _validator(json.dumps(schema, sort_keys=True, default=str))
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(arguments)))
    if error is not None:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        raise ToolError(f"invalid arguments: arguments{where}: {error.message}")
