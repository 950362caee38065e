"""Reading agent YAML files: safe parsing, ``${VAR}`` interpolation, strict structuring, validation.

A file goes through these steps, and every problem found on the way is kept
(a file reports all its errors at once, not only the first):

1. size cap, then ``yaml.SafeLoader`` composition; the node graph is checked
   for alias bombs, recursive aliases and duplicate keys *before* anything is
   constructed;
2. ``${VAR}`` / ``${VAR:-default}`` interpolation in every string value
   (``$${`` is a literal ``${``); values from variables stay strings;
3. structuring into the attrs classes of :mod:`agentrunner.schema` with
   strict types (a bool field takes only ``true``/``false``, an int field no
   ``1.7`` nor ``'5'``, a str field no ``4``), the fields' declared checks and
   the classes' cross-field rules; unknown keys warn (errors in strict mode);
4. the registry: the execution mode must be installed and the section it
   owns is structured with its ``config_type``; the provider and tool types
   must be installed and may veto what they cannot serve.

Problems are :class:`ConfigProblem` values printed as
``support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import attrs
import cattrs
import yaml

from agentrunner.interfaces import mode_config_section
from agentrunner.schema import CHECKS, SECTION_FIELDS, AgentConfig, LLMConfig, SchemaError, ToolConfig, show

if TYPE_CHECKING:
    from agentrunner.plugins import Registry

__all__ = [
    "AGENT_FILE_SUFFIXES",
    "MAX_FILE_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "AgentConfig",
    "AgentConfigError",
    "ConfigProblem",
    "LoadResult",
    "LoaderOptions",
    "agent_files",
    "interpolate_text",
    "is_agent_file",
    "join_path",
    "load_agent_file",
    "load_agent_text",
    "load_agents",
    "make_converter",
    "parse_yaml",
    "validate_agent_references",
]

logger = logging.getLogger("agentrunner.config")

#: Largest agent file read (bytes); a bigger one is refused before it is read.
MAX_FILE_BYTES = 256 * 1024
#: Most YAML values a file may expand to once aliases are followed (a real agent has a few hundred).
MAX_YAML_NODES = 100_000
#: Deepest nesting of YAML collections accepted (a real agent nests a handful of levels).
MAX_YAML_DEPTH = 64
AGENT_FILE_SUFFIXES = (".yaml", ".yml")

#: ``provider`` and ``model`` are understood by every provider, so they are never "unsupported".
_ALWAYS_SUPPORTED = frozenset({"provider", "model"})


# --- Problems -----------------------------------------------------------------------


@attrs.frozen
class ConfigProblem:
    """One problem of one agent file; ``field`` is a path like ``tools[0].auth.token`` ("" for the file)."""

    file: str
    field: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


class AgentConfigError(Exception):
    """An agent file that cannot be loaded.

    ``problems`` holds every problem found in the file: its errors and also its
    warnings (``severity`` tells them apart; ``errors`` / ``warnings`` split
    them). ``agent_name`` is the name the file gives, when it could be read.
    """

    def __init__(self, problems: Iterable[ConfigProblem], *, agent_name: str | None = None) -> None:
        self.problems = list(problems)
        self.agent_name = agent_name
        super().__init__("\n".join(str(problem) for problem in self.errors) or "invalid agent configuration")

    @property
    def errors(self) -> list[ConfigProblem]:
        """The problems of severity ``error``."""
        return [problem for problem in self.problems if problem.severity == "error"]

    @property
    def warnings(self) -> list[ConfigProblem]:
        """The problems of severity ``warning``."""
        return [problem for problem in self.problems if problem.severity == "warning"]


# --- Options ------------------------------------------------------------------------


@attrs.frozen
class LoaderOptions:
    """What the loader needs from the settings.

    ``strict`` turns every warning into an error (``CONFIG_STRICT_MODE``).
    ``section_defaults`` gives defaults for fields of mode sections, by
    section (``{"continuous_config": {"idle_timeout_seconds": 600}}``); they
    apply where the YAML leaves a field out. ``environ`` is what ``${VAR}``
    reads.
    """

    strict: bool = False
    default_provider: str = "echo"
    default_model: str = "echo"
    default_max_retries: int = 3
    default_retry_delay: float = 5.0
    section_defaults: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    environ: Mapping[str, str] = attrs.field(factory=lambda: os.environ, repr=False)  # repr: holds secrets
    max_file_bytes: int = MAX_FILE_BYTES
    max_yaml_nodes: int = MAX_YAML_NODES

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None) -> LoaderOptions:
        """Options from the platform settings (missing attributes keep their defaults).

        ``${VAR}`` reads ``environ`` if given, else ``settings.environ`` when the
        settings expose one (the environment merged with ``.env``), else ``os.environ``.
        """
        defaults = cls()

        def get(name: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            return default if value is None else value

        environ = environ if environ is not None else get("environ", os.environ)
        return cls(
            strict=bool(get("config_strict_mode", False)),
            default_provider=get("default_llm_provider", defaults.default_provider),
            default_model=get("default_llm_model", defaults.default_model),
            default_max_retries=get("task_max_retries", defaults.default_max_retries),
            default_retry_delay=get("task_retry_delay", defaults.default_retry_delay),
            section_defaults={
                "continuous_config": {
                    "idle_timeout_seconds": get("state_idle_timeout", 900),
                    "save_interval_seconds": get("state_save_interval", 180),
                    "max_conversation_history": get("state_history_limit", 100),
                },
                "schedule_config": {"timezone": get("scheduler_timezone", "UTC")},
            },
            environ=environ,
        )


# --- Collecting problems --------------------------------------------------------------


def join_path(base: str, part: str | int) -> str:
    """``join_path("tools", 0)`` → ``tools[0]``; ``join_path("tools[0]", "auth")`` → ``tools[0].auth``.

    A string part may itself be a relative path (``"tools[1].name"``, ``"[2]"``, ``".type"``).
    """
    if isinstance(part, int):
        return f"{base}[{part}]"
    if not part:
        return base
    if not base:
        return part.lstrip(".")
    return base + part if part[0] in ".[" else f"{base}.{part}"


class _Report:
    """The problems of one file, in the order they were found, without duplicates."""

    def __init__(self, filename: str, strict: bool) -> None:
        self.filename = filename
        self.strict = strict
        self.problems: list[ConfigProblem] = []
        # Fields whose ${VAR} failed: any further complaint about their value is noise.
        self.muted: set[str] = set()
        # Fields whose text came from ${VAR}: a type error there gets a hint.
        self.from_env: set[str] = set()

    def error(self, field: str, message: str) -> None:
        """Record an error at ``field``."""
        if field not in self.muted:
            self._add(ConfigProblem(self.filename, field, message, "error"))

    def warning(self, field: str, message: str) -> None:
        """Record a warning at ``field`` (an error in strict mode)."""
        if field not in self.muted:
            self._add(ConfigProblem(self.filename, field, message, "error" if self.strict else "warning"))

    def _add(self, problem: ConfigProblem) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    @property
    def has_errors(self) -> bool:
        """Whether any error was recorded."""
        return any(problem.severity == "error" for problem in self.problems)

    @property
    def warnings(self) -> list[ConfigProblem]:
        """The warnings recorded."""
        return [problem for problem in self.problems if problem.severity == "warning"]


class _Invalid:
    """The result of structuring a value that had errors (they are in the report)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
#: A field the YAML leaves out: the class's default applies.
_LEFT_OUT: Any = object()


# --- Step 1: YAML ---------------------------------------------------------------------


class _Refused(Exception):
    """The YAML node graph is unsafe or ambiguous; the message says why."""


class _SafeDepthLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep nesting while scanning.

    PyYAML's scanner is quadratic in the flow nesting depth (256 KiB of ``[``
    would take hours) and its composer recursive, so the depth is capped where
    each level opens, before any of that cost is paid.
    """

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _Refused(f"the YAML is nested more than {MAX_YAML_DEPTH} levels deep")
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if self.indent < column and len(self.indents) >= MAX_YAML_DEPTH:
            raise _Refused(f"the YAML is nested more than {MAX_YAML_DEPTH} levels deep")
        return super().add_indent(column)


def _yaml_error_message(exc: yaml.YAMLError) -> str:
    """A YAML error with its line and column (1-based)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{problem} ({context})" if context else problem
    if mark is None:
        return f"invalid YAML: {text}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    """PyYAML silently keeps the last of two equal keys; refuse instead of guessing."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        first = seen.setdefault((key.tag, key.value), line)
        if first != line:
            raise _Refused(f"duplicate key {key.value!r} at line {line} (first at line {first})")


def _check_node_graph(root: yaml.Node, limit: int) -> None:
    """Refuse alias bombs, recursive aliases and duplicate keys, before construction.

    Composition does not expand aliases (an alias is the same node object), so
    counting the expanded size with memoisation costs one visit per distinct
    node — a "billion laughs" file is refused in microseconds.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused("an alias refers to a node that contains it (recursive data is not allowed)")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        total = 1
        for child in _children(node):
            total += size(child)
            if total > limit:
                raise _Refused(f"the YAML expands to more than {limit} values (too many aliases?)")
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


def parse_yaml(text: str, *, max_nodes: int = MAX_YAML_NODES) -> Any:
    """Parse one YAML document safely; raise ``ValueError`` with a readable message.

    Safe means: ``SafeLoader`` only, nesting at most ``MAX_YAML_DEPTH`` deep, at
    most ``max_nodes`` values after alias expansion, no recursive aliases, no
    duplicate keys. An empty document gives None.
    """
    loader = _SafeDepthLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ValueError(_yaml_error_message(exc)) from None
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _read_mapping(text: str, options: LoaderOptions, report: _Report) -> Any:
    """The file's top-level mapping, or INVALID with the reason reported."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > options.max_file_bytes:
        report.error("", f"the file is too large ({size} bytes; the limit is {options.max_file_bytes})")
        return INVALID
    try:
        data = parse_yaml(text, max_nodes=options.max_yaml_nodes)
    except ValueError as exc:
        report.error("", str(exc))
        return INVALID
    if data is None:
        report.error("", "the file is empty (an agent needs at least name, agent_type, execution_mode, "
                         "llm_config and system_prompt)")
        return INVALID
    if not isinstance(data, dict):
        report.error("", f"the top level must be a mapping of fields such as 'name: my-agent' (got {show(data)})")
        return INVALID
    return data


# --- Step 2: ${VAR} interpolation -------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def interpolate_text(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text``; return the text and its problems.

    ``$${`` gives a literal ``${``. The default applies when the variable is
    unset or empty. Substituted values are not interpolated again.
    """
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        whole, body = match.group(0), match.group(1)
        if whole == "$${":
            return "${"
        if body is None:
            problems.append("unterminated '${' (write '$${' for a literal '${')")
            return whole
        variable = _VARIABLE.match(body)
        if not variable:
            problems.append(f"invalid variable reference {whole!r} (use ${{NAME}} or ${{NAME:-default}})")
            return whole
        name, default = variable.groups()
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            problems.append(f"environment variable {name} is not set")
            return whole
        return value

    return _REFERENCE.sub(replace, text), problems


def _interpolate(value: Any, path: str, environ: Mapping[str, str], report: _Report) -> Any:
    """``value`` with every string interpolated (keys are left alone)."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        result, problems = interpolate_text(value, environ)
        for message in problems:
            report.error(path, message)
        if problems:
            report.muted.add(path)
        elif result != value:
            report.from_env.add(path)
        return result
    if isinstance(value, dict):
        return {key: _interpolate(item, join_path(path, str(key)), environ, report) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, join_path(path, index), environ, report) for index, item in enumerate(value)]
    return value


# --- Step 3: structuring ----------------------------------------------------------------


class _TypeProblem(ValueError):
    """A value of the wrong type for a field; the message is for the user."""


def _strict_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    raise _TypeProblem(f"expected true or false (got {show(value)})")


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _TypeProblem(f"expected an integer (got {show(value)})")


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _TypeProblem(f"expected a finite number (got {show(value)})")
        return float(value)
    raise _TypeProblem(f"expected a number (got {show(value)})")


def _strict_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    # A scalar YAML read as something else (4, true, 2024-01-01) was most likely meant as text.
    hint = "" if value is None or isinstance(value, (list, dict)) else "; write it in quotes"
    raise _TypeProblem(f"expected a string (got {show(value)}){hint}")


def make_converter() -> cattrs.Converter:
    """A cattrs converter with strict scalar hooks.

    cattrs is lenient by default (``'no'`` → True, ``1.7`` → 1, ``'5'`` → 5);
    configuration validation must not be. Extra keys are not forbidden here:
    the loader reports them itself, as warnings.
    """
    converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(str, _strict_str)
    return converter


def _format_cattrs_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, _TypeProblem):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field is missing"
    return cattrs.v.format_exception(exc, type_)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of an attrs class (string annotations included); Any where unresolvable."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a third-party class with annotations we cannot resolve
        hints = {}
    return {
        field.name: hints.get(field.name, Any if isinstance(field.type, str) or field.type is None else field.type)
        for field in attrs.fields(cls)
    }


def yaml_fields(cls: type) -> list[attrs.Attribute]:
    """The fields of an attrs class that are read from YAML (by their ``alias``)."""
    return [field for field in attrs.fields(cls) if field.init and field.metadata.get("yaml", True)]


def _accepts_none(tp: Any) -> bool:
    return tp is Any or tp is type(None) or (
        typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    )


def _required(field: attrs.Attribute) -> bool:
    return field.default is attrs.NOTHING


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Called after an attrs object was built: ``(obj, raw mapping, path) -> obj`` (may return a replacement).
AfterHook = Callable[[Any, dict, str], Any]


class _Structurer:
    """Builds attrs objects from YAML data, reporting every problem with its field path.

    cattrs (with strict scalar hooks) structures the leaves and any type this
    walk does not know; the walk itself handles attrs classes, lists, dicts,
    optionals and literals so that it can go on after a problem, check the
    fields' declared rules and report unknown keys.
    """

    def __init__(self, report: _Report, converter: cattrs.Converter, after: Mapping[type, AfterHook]) -> None:
        self.report = report
        self.converter = converter
        self.after = after

    def structure(self, tp: Any, value: Any, path: str) -> Any:
        """``value`` as ``tp``, or INVALID (problems reported)."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any or tp is object:
            return self._json(value, path)
        if origin in (Union, types.UnionType):
            options = [arg for arg in args if arg is not type(None)]
            if value is None and len(options) < len(args):
                return None
            if len(options) == 1:
                return self.structure(options[0], value, path)
        elif origin is Literal:
            if value in args:
                return value
            return self._fail(path, f"must be one of {', '.join(map(str, args))} (got {show(value)})")
        elif attrs.has(tp):
            return self.structure_class(tp, value, path)
        elif tp is list or origin is list:
            return self._list(args[0] if args else Any, value, path)
        elif tp is dict or origin is dict:
            return self._dict(args[1] if len(args) == 2 else Any, value, path)
        return self._leaf(tp, value, path)

    def structure_class(self, cls: type, data: Any, path: str, *, extra_keys: Iterable[str] = ()) -> Any:
        """An instance of the attrs class ``cls`` from a mapping, or INVALID.

        Keys in ``extra_keys`` are accepted without being fields (the caller
        handles them). A key set to null counts as left out, unless the field
        accepts null.
        """
        if not isinstance(data, dict):
            return self._fail(path, f"expected a mapping of fields (got {show(data)})")
        fields = yaml_fields(cls)
        hints = _type_hints(cls)
        self._report_unknown(data, [field.alias for field in fields] + list(extra_keys), path)
        kwargs: dict[str, Any] = {}
        for field in fields:
            kwargs[field.alias] = self._field_value(field, hints[field.name], data, join_path(path, field.alias))
        if any(value is INVALID for value in kwargs.values()):
            return INVALID
        instance = self._construct(cls, {k: v for k, v in kwargs.items() if v is not _LEFT_OUT}, path)
        hook = self.after.get(cls)
        return hook(instance, data, path) if hook and instance is not INVALID else instance

    def _field_value(self, field: attrs.Attribute, tp: Any, data: dict, path: str) -> Any:
        """One field's structured and checked value; _LEFT_OUT when its default applies; INVALID on a problem."""
        key = field.alias
        value = data.get(key)
        if value is None and not (key in data and _accepts_none(tp)):
            return self._fail(path, "required field is missing") if _required(field) else _LEFT_OUT
        if field.metadata.get("secret") and not isinstance(value, str):
            # The usual message quotes the value; a secret's must not be.
            return self._fail(path, "expected a string (the value is not shown: it is a secret)")
        result = self.structure(tp, value, path)
        if result is INVALID:
            return INVALID
        # Checks see the number as written (-1, not the -1.0 a float field stores) for their messages.
        shown = value if isinstance(value, int) and isinstance(result, float) else result
        return result if self._checks_pass(field, shown, path) else INVALID

    # --- pieces

    def _fail(self, path: str, message: str) -> Any:
        if path in self.report.from_env and message.startswith("expected"):
            message += "; ${VAR} values are always text, so write numbers and true/false in the YAML itself"
        self.report.error(path, message)
        return INVALID

    def _report_unknown(self, data: dict, known: list[str], path: str) -> None:
        for key in data:
            if key in known:
                continue
            if not isinstance(key, str):
                self.report.warning(join_path(path, str(key)), f"unknown field (a key of type {type(key).__name__})")
                continue
            self.report.warning(join_path(path, key), "unknown field" + _suggest(key, known))

    def _checks_pass(self, field: attrs.Attribute, value: Any, path: str) -> bool:
        if value is None:  # an optional field written as null: not set, nothing to check
            return True
        problems = [(sub, message) for check in field.metadata.get(CHECKS, ()) for sub, message in check(value)]
        for sub, message in problems:
            self.report.error(join_path(path, sub), message)
        return not problems

    def _construct(self, cls: type, kwargs: dict[str, Any], path: str) -> Any:
        """``cls(**kwargs)``; its cross-field rules (SchemaError) become problems at their fields."""
        try:
            return cls(**kwargs)
        except SchemaError as exc:
            for field, message in exc.problems:
                self.report.error(join_path(path, field), message)
        except (ValueError, TypeError) as exc:  # a third-party class's own validators
            self.report.error(path, str(exc) or type(exc).__name__)
        return INVALID

    def _list(self, item_type: Any, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            return self._fail(path, f"expected a list (got {show(value)})")
        items = [self.structure(item_type, item, join_path(path, index)) for index, item in enumerate(value)]
        return INVALID if any(item is INVALID for item in items) else items

    def _dict(self, value_type: Any, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            return self._fail(path, f"expected a mapping (got {show(value)})")
        result, ok = {}, True
        for key, item in value.items():
            if not isinstance(key, str):
                self._fail(join_path(path, str(key)), f"keys must be strings (got {show(key)}); write it in quotes")
                ok = False
                continue
            result[key] = self.structure(value_type, item, join_path(path, key))
            ok = ok and result[key] is not INVALID
        return result if ok else INVALID

    def _json(self, value: Any, path: str) -> Any:
        """Free-form data (``task_data``, ``parameters``): it must be JSON-able, as it travels as JSON."""
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else self._fail(path, f"expected a finite number (got {show(value)})")
        if isinstance(value, (list, dict)):
            return self._list(Any, value, path) if isinstance(value, list) else self._dict(Any, value, path)
        return self._fail(path, f"not JSON data (got {show(value)}); write it in quotes")

    def _leaf(self, tp: Any, value: Any, path: str) -> Any:
        try:
            return self.converter.structure(value, tp)
        except (cattrs.ClassValidationError, cattrs.IterableValidationError) as exc:
            for line in cattrs.transform_error(exc, path="$", format_exception=_format_cattrs_exception):
                message, _, where = line.rpartition(" @ $")
                self.report.error(join_path(path, where), message)
        except Exception as exc:
            self._fail(path, _format_cattrs_exception(exc, tp))
        return INVALID


# --- Step 4: registry checks ------------------------------------------------------------


def _plugin_problems(validate: Callable[[Any], Any], value: Any, who: str) -> list[tuple[str, str]]:
    """A plugin's ``validate(value)`` as (field, message) pairs; a crashing validator is a problem too."""
    try:
        result = validate(value)
    except Exception as exc:
        return [("", f"{who} could not validate this entry: {exc!r}")]
    problems = []
    for item in result or ():
        field, message = item if isinstance(item, tuple) and len(item) == 2 else ("", str(item))
        problems.append((str(field or ""), str(message)))
    return problems


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


class _AgentBuilder:
    """Builds one AgentConfig from interpolated YAML data, using the registry."""

    def __init__(self, options: LoaderOptions, registry: Registry, report: _Report) -> None:
        self.options = options
        self.registry = registry
        self.report = report
        self.explicit_llm_fields: frozenset[str] = frozenset()
        self.structurer = _Structurer(
            report, make_converter(), {LLMConfig: self._after_llm_config, ToolConfig: self._after_tool}
        )

    def build(self, data: dict) -> Any:
        """The AgentConfig, or INVALID (problems reported)."""
        mode_name = data.get("execution_mode")
        mode = self.registry.execution_modes.get(mode_name) if isinstance(mode_name, str) else None
        sections = self._sections()
        agent = self.structurer.structure_class(AgentConfig, self._with_defaults(data), "", extra_keys=sections)
        if isinstance(mode_name, str) and mode_name.strip() and mode is None:
            self.report.error("execution_mode", self.registry.missing("execution mode", mode_name))
        section_values = self._structure_sections(data, mode_name, mode, sections)
        if agent is INVALID or section_values is INVALID:
            return INVALID
        agent = attrs.evolve(agent, **section_values)
        provider = self.registry.providers.get(agent.llm_config.provider)
        validate_agent = getattr(provider, "validate_agent", None)
        if callable(validate_agent):  # e.g. a model that takes no system prompt or no tools
            problems = _plugin_problems(validate_agent, agent, f"provider {agent.llm_config.provider!r}")
            for field, message in problems:
                self.report.error(field, message)
            if problems:
                return INVALID
        return agent

    def _sections(self) -> dict[str, str]:
        """Each YAML section an installed mode owns → that mode's name."""
        owners: dict[str, str] = {}
        for name, mode in sorted(self.registry.execution_modes.items()):
            section, _ = mode_config_section(mode)
            if section:
                owners.setdefault(section, name)
        return owners

    def _with_defaults(self, data: dict) -> dict:
        """``data`` with the settings' defaults where the YAML leaves llm_config and retry_config fields out."""
        data = dict(data)
        llm = data.get("llm_config")
        if isinstance(llm, dict):
            known = {field.alias for field in yaml_fields(LLMConfig)}
            self.explicit_llm_fields = frozenset(
                key for key, value in llm.items() if key in known and value is not None
            )
            defaults = {"provider": self.options.default_provider, "model": self.options.default_model}
            data["llm_config"] = _merge_defaults(defaults, llm)
        retry = data.get("retry_config")
        if retry is None or isinstance(retry, dict):
            defaults = {
                "max_retries": self.options.default_max_retries,
                "retry_delay_seconds": self.options.default_retry_delay,
            }
            data["retry_config"] = _merge_defaults(defaults, retry or {})
        return data

    def _structure_sections(self, data: dict, mode_name: Any, mode: Any, sections: dict[str, str]) -> Any:
        """The keyword arguments for the agent's mode sections, or INVALID."""
        values: dict[str, Any] = dict.fromkeys(SECTION_FIELDS)
        values["mode_config"] = None
        if mode is None:  # unknown mode (already reported): no way to tell which section applies
            return values
        own_section, own_type = mode_config_section(mode)
        for section, owner in sections.items():
            if section != own_section and section in data:
                self.report.warning(section, f"ignored: execution_mode is {mode_name}, not {owner}")
        if not own_section:
            return values
        raw = data.get(own_section)
        if raw is None:
            if getattr(mode, "config_required", False):
                self.report.error(own_section, f"required for execution_mode {mode_name}")
                return INVALID
            raw = {}
        if isinstance(raw, dict):
            defaults = dict(self.options.section_defaults.get(own_section, {}))
            if own_type is not None and attrs.has(own_type):  # only defaults the section's class knows
                names = {field.alias for field in yaml_fields(own_type)}
                defaults = {key: value for key, value in defaults.items() if key in names}
            raw = _merge_defaults(defaults, raw)
        if own_type is None:
            value = self.structurer.structure(dict[str, Any], raw, own_section)
        else:
            value = self.structurer.structure(own_type, raw, own_section)
        if value is INVALID:
            return INVALID
        if own_section in SECTION_FIELDS:
            values[own_section] = value
        values["mode_config"] = value
        return values

    def _after_llm_config(self, llm: LLMConfig, raw: dict, path: str) -> LLMConfig:
        """Record which fields the YAML set, then let the provider judge them."""
        llm = attrs.evolve(llm, explicit_fields=self.explicit_llm_fields)
        provider = self.registry.providers.get(llm.provider)
        if provider is None:
            message = self.registry.missing("provider", llm.provider)
            if "provider" not in llm.explicit_fields:
                message += " (from DEFAULT_LLM_PROVIDER)"
            self.report.error(join_path(path, "provider"), message)
            return llm
        supported = getattr(provider, "supported_options", None)
        if supported is not None:
            for name in sorted(llm.explicit_fields - _ALWAYS_SUPPORTED - frozenset(supported)):
                self.report.warning(join_path(path, name), f"not supported by provider {llm.provider!r}")
        validate = getattr(provider, "validate", None)
        if callable(validate):
            for field, message in _plugin_problems(validate, llm, f"provider {llm.provider!r}"):
                self.report.error(join_path(path, field), message)
        return llm

    def _after_tool(self, tool: ToolConfig, raw: dict, path: str) -> ToolConfig:
        """The tool type must be installed; it names the fields it needs and may veto the entry."""
        tool_type = self.registry.tool_types.get(tool.type)
        if tool_type is None:
            self.report.error(join_path(path, "type"), self.registry.missing("tool type", tool.type))
            return tool
        missing = [name for name in getattr(tool_type, "required_fields", ()) if _empty(getattr(tool, name, None))]
        for name in missing:
            self.report.error(join_path(path, name), f"required for tool type {tool.type!r}")
        validate = getattr(tool_type, "validate", None)
        if not missing and callable(validate):  # its checks would only repeat that a field is missing
            for field, message in _plugin_problems(validate, tool, f"tool type {tool.type!r}"):
                self.report.error(join_path(path, field), message)
        return tool


def _merge_defaults(defaults: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    """``data`` over ``defaults``; a key the YAML sets to null takes the default too."""
    merged = dict(defaults)
    merged.update({key: value for key, value in data.items() if not (value is None and key in defaults)})
    return merged


# --- Public entry points ------------------------------------------------------------------


def load_agent_text(
    text: str,
    *,
    filename: str,
    options: LoaderOptions,
    registry: Registry,
    source_file: Path | None = None,
) -> tuple[AgentConfig, list[ConfigProblem]]:
    """Load one agent from YAML text; return it with its warnings.

    ``filename`` names the file in problems. Raises :class:`AgentConfigError`
    with every problem found when there is at least one error.
    """
    report = _Report(filename, options.strict)
    data = _read_mapping(text, options, report)
    agent: Any = INVALID
    agent_name = None
    if data is not INVALID:
        data = _interpolate(data, "", options.environ, report)
        agent_name = data.get("name") if isinstance(data.get("name"), str) else None
        agent = _AgentBuilder(options, registry, report).build(data)
    if agent is INVALID or report.has_errors:
        raise AgentConfigError(report.problems, agent_name=agent_name)
    return attrs.evolve(agent, source_file=source_file), report.warnings


def load_agent_file(
    path: str | os.PathLike[str],
    options: LoaderOptions,
    registry: Registry,
    *,
    filename: str | None = None,
) -> tuple[AgentConfig, list[ConfigProblem]]:
    """Load one agent file (see :func:`load_agent_text`); ``filename`` defaults to the path as given.

    The size is checked before the file is read, and never more than
    ``max_file_bytes`` + 1 bytes are read (the file may grow meanwhile).
    """
    path = Path(path)
    display = filename or str(path)

    def fail(message: str) -> AgentConfigError:
        return AgentConfigError([ConfigProblem(display, "", message, "error")])

    try:
        if not path.is_file():
            raise fail("not a regular file")
        size = path.stat().st_size
        if size > options.max_file_bytes:
            raise fail(f"the file is too large ({size} bytes; the limit is {options.max_file_bytes})")
        with path.open("rb") as stream:
            data = stream.read(options.max_file_bytes + 1)
    except OSError as exc:
        raise fail(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > options.max_file_bytes:
        raise fail(f"the file is too large (more than {options.max_file_bytes} bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    return load_agent_text(text, filename=display, options=options, registry=registry, source_file=path)


@attrs.define
class LoadResult:
    """The agents of a directory and the problems of its files.

    ``files`` maps each agent to its file; ``failed`` maps the name of each
    agent whose file has errors (when the name could be read) to that file.
    """

    agents: dict[str, AgentConfig] = attrs.field(factory=dict)
    errors: list[ConfigProblem] = attrs.field(factory=list)
    warnings: list[ConfigProblem] = attrs.field(factory=list)
    files: dict[str, Path] = attrs.field(factory=dict)
    failed: dict[str, Path] = attrs.field(factory=dict)
    directory: Path | None = None

    def display_name(self, path: Path) -> str:
        """A file as problems name it: relative to the directory, with '/' separators."""
        if self.directory is not None:
            try:
                return path.relative_to(self.directory).as_posix()
            except ValueError:
                pass
        return str(path)


def is_agent_file(name: str) -> bool:
    """``.yaml`` / ``.yml`` files, except hidden ones and editor leftovers (``.#x.yaml``, ``~x.yaml``)."""
    return name.lower().endswith(AGENT_FILE_SUFFIXES) and not name.startswith((".", "~", "#"))


def agent_files(directory: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """The agent files of a directory, sorted by relative path; hidden directories are skipped."""
    directory = Path(directory)
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root) / name for name in names if is_agent_file(name) and (Path(root) / name).is_file()]
    return sorted(found, key=lambda path: path.relative_to(directory).as_posix())


def load_agents(
    directory: str | os.PathLike[str],
    options: LoaderOptions,
    registry: Registry,
    recursive: bool = True,
) -> LoadResult:
    """Load every agent file of a directory; one bad file never stops the others.

    Files load in sorted order; when two files define the same agent the
    second gets an error naming the first. Cross-agent references are checked
    last (:func:`validate_agent_references`).
    """
    directory = Path(directory)
    result = LoadResult(directory=directory)
    if not directory.is_dir():
        result.errors.append(ConfigProblem(str(directory), "", "agents directory not found", "error"))
        return result
    for path in agent_files(directory, recursive=recursive):
        _load_into(result, path, options, registry)
    validate_agent_references(result)
    return result


def _load_into(result: LoadResult, path: Path, options: LoaderOptions, registry: Registry) -> None:
    """Load one file into ``result``."""
    display = result.display_name(path)
    try:
        agent, warnings = load_agent_file(path, options, registry, filename=display)
    except AgentConfigError as exc:
        result.errors += exc.errors
        result.warnings += exc.warnings
        if exc.agent_name and exc.agent_name not in result.agents:
            result.failed.setdefault(exc.agent_name, path)
        return
    except Exception as exc:  # a plugin's bug must not stop the other files
        logger.exception("unexpected failure loading %s", display)
        result.errors.append(ConfigProblem(display, "", f"could not be loaded: {exc!r}", "error"))
        return
    result.warnings += warnings
    first = result.files.get(agent.name)
    if first is not None:
        result.errors.append(
            ConfigProblem(display, "name", f"duplicate agent name {agent.name!r}: already defined in "
                                           f"{result.display_name(first)}", "error")
        )
        return
    result.agents[agent.name] = agent
    result.files[agent.name] = path


def _reference_problems(agent: AgentConfig, result: LoadResult) -> Iterator[tuple[str, str]]:
    """The (field, message) problems of an agent's references to other agents."""
    config = agent.collaborative_config
    for index, name in enumerate(config.preferred_collaborators if config is not None else ()):
        field = f"collaborative_config.preferred_collaborators[{index}]"
        if name == agent.name:
            yield field, "an agent cannot be its own collaborator"
        elif name in result.agents:
            continue
        elif name in result.failed:
            yield field, f"agent {name!r} is not loaded: {result.display_name(result.failed[name])} has errors"
        else:
            yield field, f"unknown agent {name!r} (no agent file defines it)"


def validate_agent_references(result: LoadResult) -> None:
    """Check references between agents (collaborators); an agent with a bad one is not loaded.

    Its errors are added to ``result.errors`` and the agent moves from
    ``agents`` to ``failed``, which may in turn break agents that name it:
    the check repeats until nothing changes. Calling it again adds nothing.
    """
    changed = True
    while changed:
        changed = False
        for name, agent in sorted(result.agents.items()):
            problems = list(_reference_problems(agent, result))
            if not problems:
                continue
            path = result.files.pop(name)
            del result.agents[name]
            result.failed[name] = path
            for field, message in problems:
                problem = ConfigProblem(result.display_name(path), field, message, "error")
                if problem not in result.errors:
                    result.errors.append(problem)
            changed = True
