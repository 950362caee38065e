"""The agent YAML schema as attrs classes (public: plugins import it).

Every class can be built directly (``ContinuousConfig(max_conversation_history=2)``)
and checks its values when it is: a bad value raises :class:`SchemaError`, a
``ValueError`` carrying ``(field, message)`` pairs. The agent loader
(``agentrunner.agent_loader``) builds them from YAML and reports every problem
of a file at once, with field paths such as ``llm_config.temperature``.

How a field is checked is declared on the field itself (``metadata[CHECKS]``),
so the loader and the constructors apply exactly the same rules, and a
third-party execution mode's own attrs class is validated the same way.
Fields marked ``metadata["yaml"] = False`` are never read from YAML (the
loader fills them); fields marked ``metadata["secret"]`` never appear in
``repr`` or :func:`as_dict`.
"""

import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = [
    "AGENT_NAME_PATTERN",
    "AGENT_TYPES",
    "AUTH_REQUIRED_FIELDS",
    "AUTH_TYPES",
    "CHECKS",
    "HTTP_METHODS",
    "PLANNING_STRATEGIES",
    "PRUNING_STRATEGIES",
    "RESPONSE_FORMAT_TYPES",
    "SCHEDULE_TYPES",
    "SECTION_FIELDS",
    "TOOL_NAME_PATTERN",
    "AgentConfig",
    "AuthConfig",
    "CollaborativeConfig",
    "ContinuousConfig",
    "LLMConfig",
    "RetryConfig",
    "ScheduleConfig",
    "SchemaError",
    "ToolConfig",
    "agent_name",
    "as_dict",
    "at_least",
    "between",
    "checked",
    "cron_expression",
    "each",
    "greater_than",
    "http_url",
    "not_blank",
    "one_of",
    "show",
    "time_zone",
    "topic_pattern",
]

#: ``metadata`` key holding a field's checks: callables ``value -> [(sub_path, message)]``.
CHECKS = "agentrunner.checks"

AGENT_NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
TOOL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PYTHON_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

AGENT_TYPES = ("assistant", "specialist", "coordinator")
AUTH_TYPES = ("bearer_token", "api_key", "oauth2")
#: The fields each auth type needs.
AUTH_REQUIRED_FIELDS = {
    "bearer_token": ("token",),
    "api_key": ("key",),
    "oauth2": ("token_url", "client_id", "client_secret"),
}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
PRUNING_STRATEGIES = ("sliding_window", "summarize")
PLANNING_STRATEGIES = ("hierarchical", "consensus", "sequential")
SCHEDULE_TYPES = ("cron", "interval")

#: AMQP carries a binding key as a ``shortstr``: at most 255 bytes of UTF-8.
MAX_TOPIC_BYTES = 255

#: The mode sections the core knows by attribute name (a third-party one is only ``mode_config``).
SECTION_FIELDS = ("continuous_config", "collaborative_config", "schedule_config")

Problems = list[tuple[str, str]]
Check = Callable[[Any], Problems]


class SchemaError(ValueError):
    """Invalid values for a schema class; ``problems`` holds ``(field, message)`` pairs.

    ``field`` is relative to the object being built (``"temperature"``,
    ``"tools[1].name"``); an empty field means the object as a whole.
    """

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems: Problems = list(problems)
        super().__init__("; ".join(f"{field}: {message}" if field else message for field, message in self.problems))


# --- Showing values in messages ------------------------------------------------


def show(value: Any, limit: int = 60) -> str:
    """A value as YAML users read it: ``true``, ``null``, ``3.5``, ``'text'``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= limit else text[: limit - 4] + "...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__} ({str(value)[:limit]})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- Checks: each returns [(sub_path, message)], empty when the value is fine -----------------


def between(low: float, high: float) -> Check:
    """The value lies in ``[low, high]``."""

    def check(value: Any) -> Problems:
        if not _is_number(value):
            return [("", f"expected a number (got {show(value)})")]
        if not low <= value <= high:  # also false for NaN
            return [("", f"must be between {low} and {high} (got {show(value)})")]
        return []

    return check


def at_least(low: float) -> Check:
    """The value is ``>= low``."""

    def check(value: Any) -> Problems:
        if not _is_number(value):
            return [("", f"expected a number (got {show(value)})")]
        if not value >= low:
            return [("", f"must be at least {low} (got {show(value)})")]
        return []

    return check


def greater_than(low: float) -> Check:
    """The value is ``> low``."""

    def check(value: Any) -> Problems:
        if not _is_number(value):
            return [("", f"expected a number (got {show(value)})")]
        if not value > low:
            return [("", f"must be greater than {low} (got {show(value)})")]
        return []

    return check


def one_of(choices: Iterable[str], *, ignore_case: bool = False) -> Check:
    """The value is one of ``choices``."""
    choices = tuple(choices)
    folded = {c.casefold() for c in choices}

    def check(value: Any) -> Problems:
        ok = value in choices or (ignore_case and isinstance(value, str) and value.casefold() in folded)
        return [] if ok else [("", f"must be one of {', '.join(choices)} (got {show(value)})")]

    return check


def not_blank(value: Any) -> Problems:
    """A string with something besides whitespace."""
    if isinstance(value, str) and value.strip():
        return []
    return [("", "must not be empty")]


def agent_name(value: Any) -> Problems:
    """A valid agent name: what routing keys, URLs and schedule names are built from."""
    if isinstance(value, str) and AGENT_NAME_PATTERN.match(value):
        return []
    return [
        (
            "",
            f"must be 1-64 lowercase letters, digits and hyphens, starting and ending with a letter "
            f"or digit (got {show(value)})",
        )
    ]


def tool_name(value: Any) -> Problems:
    """A tool name every provider accepts as a function name."""
    if isinstance(value, str) and TOOL_NAME_PATTERN.match(value):
        return []
    return [("", f"must be 1-64 letters, digits, '_' or '-' (got {show(value)})")]


def python_target(value: Any) -> Problems:
    """``package.module:callable``."""
    if isinstance(value, str) and _PYTHON_TARGET.match(value):
        return []
    return [("", f"must look like package.module:callable (got {show(value)})")]


def http_url(value: Any) -> Problems:
    """An absolute ``http://`` or ``https://`` URL."""
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is not None and parts.scheme in ("http", "https") and parts.netloc:
        return []
    return [("", f"must be an http:// or https:// URL (got {show(value)})")]


def topic_pattern(value: Any) -> Problems:
    """An event subscription: an AMQP topic binding key whose wildcards are whole words.

    RabbitMQ treats ``*`` and ``#`` as wildcards only when they are a whole
    word; in ``slack.command*`` the ``*`` is a literal character, so the
    pattern would silently match nothing the author meant.
    """
    if not isinstance(value, str) or not value:
        return [("", "must be a non-empty topic pattern such as 'slack.command.*'")]
    size = len(value.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        return [("", f"is {size} bytes long; a topic pattern holds at most {MAX_TOPIC_BYTES} bytes")]
    for word in value.split("."):
        if ("*" in word or "#" in word) and word not in ("*", "#"):
            return [
                (
                    "",
                    f"the word {word!r} mixes a wildcard with other characters, which RabbitMQ treats "
                    f"literally; '*' (one word) and '#' (any number of words) must stand alone between "
                    f"dots (got {show(value)})",
                )
            ]
    return []


def time_zone(value: Any) -> Problems:
    """An IANA time zone name known to ``zoneinfo`` (``UTC``, ``Europe/Paris``)."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return [("", f"unknown time zone {show(value)} (use an IANA name such as UTC or Europe/Paris)")]
    return []


def response_format(value: Any) -> Problems:
    """OpenAI's ``response_format``: ``{type: text | json_object | json_schema, ...}``."""
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind is None:
        return [(".type", f"required field is missing (one of {', '.join(RESPONSE_FORMAT_TYPES)})")]
    problems = [(".type", message) for _, message in one_of(RESPONSE_FORMAT_TYPES)(kind)]
    if kind == "json_schema" and not isinstance(value.get("json_schema"), Mapping):
        problems.append((".json_schema", "required for type json_schema (a mapping with name and schema)"))
    return problems


def unique_tool_names(tools: Any) -> Problems:
    """Tool names are what the model calls, so two tools of an agent cannot share one."""
    first: dict[str, int] = {}
    problems = []
    for index, tool in enumerate(tools):
        name = getattr(tool, "name", None)
        if name in first:
            problems.append((f"[{index}].name", f"duplicate tool name {name!r} (also tools[{first[name]}])"))
        first.setdefault(name, index)
    return problems


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a list, reporting ``[i]`` paths."""

    def check_each(values: Any) -> Problems:
        return [(f"[{i}]{sub}", message) for i, value in enumerate(values) for sub, message in check(value)]

    return check_each


# Cron: five fields, each a list of ``*``, ``n`` or ``a-b``, optionally ``/step``.
_CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)},
    ),
    # 0-6 with Sunday=0 as the reference says; 7 is Sunday too, as in every crontab.
    ("day of week", 0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)
_CRON_PART = re.compile(r"^(\*|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


def _cron_value(token: str, name: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """Why one number or name of a cron field is wrong, or None."""
    if token.lower() in names:
        return None
    if not token.isdigit():
        return f"{name}: {token!r} is not a number" + (f" or a name ({', '.join(names)})" if names else "")
    if not low <= int(token) <= high:
        return f"{name} {token} is out of range {low}-{high}"
    return None


def _cron_number(token: str, names: dict[str, int]) -> int:
    return names.get(token.lower(), int(token) if token.isdigit() else -1)


def _cron_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """Why one field of a cron expression is wrong, or None."""
    for part in text.split(","):
        match = _CRON_PART.match(part)
        if not match:
            return f"{name}: {part!r} is not '*', a number, a range a-b or a step */n"
        span, step = match.groups()
        if step is not None and int(step) < 1:
            return f"{name}: the step in {part!r} must be at least 1"
        if span == "*":
            continue
        ends = span.split("-")
        for token in ends:
            problem = _cron_value(token, name, low, high, names)
            if problem:
                return problem
        if len(ends) == 2 and _cron_number(ends[0], names) > _cron_number(ends[1], names):
            return f"{name}: the range {span!r} runs backwards"
    return None


def cron_expression(value: Any) -> Problems:
    """A standard 5-field crontab expression: minute hour day-of-month month day-of-week.

    Numbers, ``*``, ranges ``a-b``, lists ``a,b`` and steps ``/n``; month and
    day names (``jan``, ``mon``); day of week 0-6 with Sunday=0 (7 is also
    Sunday). Seconds fields, ``@daily`` macros and the non-standard ``L``,
    ``W``, ``#``, ``?`` and ``H`` are refused, because schedulers disagree on them.
    """
    if not isinstance(value, str):
        return [("", f"expected a string (got {show(value)})")]
    fields = value.split()
    if len(fields) != 5:
        return [
            (
                "",
                f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)} in "
                f"{show(value)}",
            )
        ]
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        problem = _cron_field(text, name, low, high, names)
        if problem:
            return [("", f"{problem} (in {show(value)})")]
    from croniter import croniter  # lazily: only agents with a cron schedule need it

    # A last word from the library the scheduler fires with, for anything the rules above let through.
    if not croniter.is_valid(value):
        return [("", f"is not a valid cron expression (got {show(value)})")]
    return []


# --- Fields ---------------------------------------------------------------------


def _run_checks(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: run the field's declared checks (None means 'not set' and is not checked)."""
    if value is None:
        return
    # A sub-path is "", "[i]" or ".key", so it appends directly to the field name.
    problems = [
        (attribute.name + sub, message)
        for check in attribute.metadata.get(CHECKS, ())
        for sub, message in check(value)
    ]
    if problems:
        raise SchemaError(problems)


def _redact_values(mapping: Mapping[str, Any]) -> str:
    """repr of a mapping whose values may be secrets (headers, env): the keys only."""
    return repr({key: "***" for key in mapping})


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def checked(*checks: Check, secret: bool = False, yaml: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``attrs.field`` declaring a field's checks and how it is treated.

    ``attrs.field(default=0.7, **checked(between(0.0, 2.0)))``; ``secret=True``
    hides the value from repr and :func:`as_dict`; ``yaml=False`` means the
    loader never reads the field from YAML (it fills it itself).
    """
    kwargs: dict[str, Any] = {
        "validator": _run_checks if checks else None,
        "metadata": {CHECKS: checks, "secret": secret, "yaml": yaml},
    }
    if secret:
        kwargs["repr"] = False
    return kwargs


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# --- The schema -------------------------------------------------------------------


@attrs.frozen
class LLMConfig:
    """``llm_config``: the model an agent talks to and its sampling options.

    The provider-specific fields default to None (not sent). ``explicit_fields``
    names the fields the YAML actually set (filled by the loader), so a
    provider is only told about options the agent chose.
    """

    provider: str = attrs.field(default="echo", **checked(not_blank))
    model: str = attrs.field(default="echo", **checked(not_blank))
    temperature: float = attrs.field(default=0.7, **checked(between(0.0, 2.0)))
    max_tokens: int = attrs.field(default=2000, **checked(at_least(1)))
    top_p: float = attrs.field(default=1.0, **checked(between(0.0, 1.0)))
    frequency_penalty: float = attrs.field(default=0.0, **checked(between(-2.0, 2.0)))
    presence_penalty: float = attrs.field(default=0.0, **checked(between(-2.0, 2.0)))
    timeout: float = attrs.field(default=60.0, **checked(greater_than(0)))
    response_format: dict[str, Any] | None = attrs.field(default=None, **checked(response_format))
    seed: int | None = None
    top_k: int | None = attrs.field(default=None, **checked(at_least(1)))
    region: str | None = attrs.field(default=None, **checked(not_blank))
    endpoint_url: str | None = attrs.field(default=None, **checked(http_url))
    base_url: str | None = attrs.field(default=None, **checked(http_url))
    num_ctx: int | None = attrs.field(default=None, **checked(at_least(1)))
    num_predict: int | None = attrs.field(default=None, **checked(at_least(-2)))
    repeat_penalty: float | None = attrs.field(default=None, **checked(at_least(0)))
    explicit_fields: frozenset[str] = attrs.field(default=frozenset(), eq=False, repr=False, **checked(yaml=False))


@attrs.frozen
class AuthConfig:
    """A tool's ``auth``: ``bearer_token`` (token), ``api_key`` (key, header) or ``oauth2``
    (client credentials: token_url, client_id, client_secret, scopes). Secrets are kept out of repr."""

    type: str = attrs.field(**checked(one_of(AUTH_TYPES)))
    token: str | None = attrs.field(default=None, **checked(secret=True))
    key: str | None = attrs.field(default=None, **checked(secret=True))
    header: str = attrs.field(default="X-API-Key", **checked(not_blank))
    token_url: str | None = attrs.field(default=None, **checked(http_url))
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, **checked(secret=True))
    scopes: list[str] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        needed = AUTH_REQUIRED_FIELDS.get(self.type, ())
        problems = [
            (name, f"required for auth type {self.type}" + (" (it is empty)" if getattr(self, name) == "" else ""))
            for name in needed
            if _missing(getattr(self, name))
        ]
        if problems:
            raise SchemaError(problems)


@attrs.frozen
class ToolConfig:
    """One entry of ``tools``. Which fields a tool needs depends on its ``type``
    (the tool type plugin says: ``function`` needs ``function``, ``api`` and ``mcp`` a ``url``)."""

    name: str = attrs.field(**checked(tool_name))
    type: str = attrs.field(**checked(not_blank))
    description: str = ""
    url: str | None = None
    command: str | None = None
    args: list[str] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict, repr=_redact_values)
    function: str | None = attrs.field(default=None, **checked(python_target))
    method: str = attrs.field(default="POST", converter=_upper, **checked(one_of(HTTP_METHODS, ignore_case=True)))
    parameters: dict[str, Any] | None = None
    headers: dict[str, str] = attrs.field(factory=dict, repr=_redact_values)
    timeout: float = attrs.field(default=30.0, **checked(greater_than(0)))
    auth: AuthConfig | None = None


@attrs.frozen
class RetryConfig:
    """``retry_config``: the only retry layer (the provider SDKs' own retries are off).

    ``max_retries`` and ``retry_delay_seconds`` default to the settings
    ``TASK_MAX_RETRIES`` and ``TASK_RETRY_DELAY`` when loaded from YAML.
    """

    max_retries: int = attrs.field(default=3, **checked(between(0, 100)))
    retry_delay_seconds: float = attrs.field(default=5.0, **checked(at_least(0)))
    exponential_backoff: bool = True
    backoff_multiplier: float = attrs.field(default=2.0, **checked(at_least(1)))
    max_retry_delay: float = attrs.field(default=60.0, **checked(at_least(0)))

    def __attrs_post_init__(self) -> None:
        if self.max_retry_delay < self.retry_delay_seconds:
            raise SchemaError(
                [
                    (
                        "max_retry_delay",
                        f"must be at least retry_delay_seconds ({show(self.retry_delay_seconds)}) "
                        f"(got {show(self.max_retry_delay)})",
                    )
                ]
            )


@attrs.frozen
class ContinuousConfig:
    """``continuous_config`` (owned by the ``continuous`` mode).

    The first three default to ``STATE_IDLE_TIMEOUT``, ``STATE_SAVE_INTERVAL``
    and ``STATE_HISTORY_LIMIT`` when loaded from YAML. ``max_conversation_history``
    counts turns (a user message and the reply).
    """

    idle_timeout_seconds: float = attrs.field(default=900.0, **checked(greater_than(0)))
    save_interval_seconds: float = attrs.field(default=180.0, **checked(greater_than(0)))
    max_conversation_history: int = attrs.field(default=100, **checked(at_least(1)))
    conversation_pruning_strategy: str = attrs.field(default="sliding_window", **checked(one_of(PRUNING_STRATEGIES)))
    auto_save_on_shutdown: bool = True
    restore_on_startup: bool = True


@attrs.frozen
class CollaborativeConfig:
    """``collaborative_config`` (owned by the ``collaborative`` mode)."""

    preferred_collaborators: list[str] = attrs.field(factory=list, **checked(each(agent_name)))
    max_plan_steps: int = attrs.field(default=10, **checked(at_least(1)))
    allow_human_clarification: bool = True
    min_collaborators: int = attrs.field(default=1, **checked(at_least(1)))
    max_collaborators: int = attrs.field(default=5, **checked(at_least(1)))
    planning_strategy: str = attrs.field(default="hierarchical", **checked(one_of(PLANNING_STRATEGIES)))
    timeout_seconds: float = attrs.field(default=300.0, **checked(greater_than(0)))

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.max_collaborators < self.min_collaborators:
            problems.append(
                (
                    "max_collaborators",
                    f"must be at least min_collaborators ({self.min_collaborators}) (got {self.max_collaborators})",
                )
            )
        count = len(self.preferred_collaborators)
        if 0 < count < self.min_collaborators:
            problems.append(
                (
                    "preferred_collaborators",
                    f"names {count} agent(s), fewer than min_collaborators ({self.min_collaborators})",
                )
            )
        seen: dict[str, int] = {}
        for index, name in enumerate(self.preferred_collaborators):
            if name in seen:
                problems.append(
                    (f"preferred_collaborators[{index}]", f"{name!r} is already listed at [{seen[name]}]")
                )
            seen.setdefault(name, index)
        if problems:
            raise SchemaError(problems)


@attrs.frozen
class ScheduleConfig:
    """``schedule_config`` (owned by the ``scheduled`` mode; required there).

    ``type: cron`` needs ``cron`` (5 fields, see :func:`cron_expression`),
    ``type: interval`` needs ``interval_seconds``; setting the other one is an
    error. ``timezone`` defaults to ``SCHEDULER_TIMEZONE`` when loaded from YAML.
    """

    type: str = attrs.field(**checked(one_of(SCHEDULE_TYPES)))
    cron: str | None = attrs.field(default=None, **checked(cron_expression))
    interval_seconds: int | None = attrs.field(default=None, **checked(at_least(1)))
    timezone: str = attrs.field(default="UTC", **checked(time_zone))
    task_data: dict[str, Any] = attrs.field(factory=dict)
    timeout_seconds: float = attrs.field(default=300.0, **checked(greater_than(0)))
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        own, other = ("cron", "interval_seconds") if self.type == "cron" else ("interval_seconds", "cron")
        problems = []
        if getattr(self, own) is None:
            problems.append((own, f"required for type {self.type}"))
        if getattr(self, other) is not None:
            problems.append((other, f"not allowed with type {self.type} (use {own})"))
        if problems:
            raise SchemaError(problems)


@attrs.frozen
class AgentConfig:
    """One agent file, validated.

    The mode sections are filled by the loader for the agent's own
    ``execution_mode`` only: ``mode_config`` is whichever section that mode
    owns (a third-party mode's too), and the built-in ones are also reachable
    as ``continuous_config``, ``collaborative_config`` and ``schedule_config``.
    ``source_file`` is the file the agent came from.
    """

    name: str = attrs.field(**checked(agent_name))
    agent_type: str = attrs.field(**checked(one_of(AGENT_TYPES)))
    execution_mode: str = attrs.field(**checked(not_blank))
    llm_config: LLMConfig
    system_prompt: str = attrs.field(**checked(not_blank))
    description: str = ""
    tags: list[str] = attrs.field(factory=list)
    event_subscriptions: list[str] = attrs.field(factory=list, **checked(each(topic_pattern)))
    tools: list[ToolConfig] = attrs.field(factory=list, **checked(unique_tool_names))
    retry_config: RetryConfig = attrs.field(factory=RetryConfig)
    continuous_config: ContinuousConfig | None = attrs.field(default=None, **checked(yaml=False))
    collaborative_config: CollaborativeConfig | None = attrs.field(default=None, **checked(yaml=False))
    schedule_config: ScheduleConfig | None = attrs.field(default=None, **checked(yaml=False))
    mode_config: Any = attrs.field(default=None, **checked(yaml=False))
    source_file: Path | None = attrs.field(default=None, eq=False, **checked(yaml=False))


# --- Output -------------------------------------------------------------------------


def redact_url_password(url: str) -> str:
    """``url`` with the password of its user info shown as ``***`` (``https://bot:***@host/v1``);
    a user name alone (often a token) is hidden whole."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at:
        return url
    shown = f"{userinfo.split(':', 1)[0]}:***" if ":" in userinfo else "***"
    return f"{scheme}://{shown}@{host}{slash}{path}"


def as_dict(value: Any, *, redact: bool = True) -> Any:
    """A schema object as JSON-able data, for APIs and logs.

    With ``redact`` (the default) secret fields show ``"***"`` and the values
    of ``headers`` and ``env`` are hidden (they often carry tokens). Fields not
    read from YAML are left out, except the built-in mode sections.
    """
    if attrs.has(type(value)):
        out = {}
        for attribute in attrs.fields(type(value)):
            if not attribute.metadata.get("yaml", True) and attribute.name not in SECTION_FIELDS:
                continue
            item = getattr(value, attribute.name)
            if redact and attribute.metadata.get("secret") and item is not None:
                out[attribute.name] = "***"
            elif redact and attribute.name in ("headers", "env") and isinstance(item, Mapping):
                out[attribute.name] = {key: "***" for key in item}
            elif redact and isinstance(item, str) and "@" in item and "://" in item:
                out[attribute.name] = redact_url_password(item)
            else:
                out[attribute.name] = as_dict(item, redact=redact)
        return out
    if isinstance(value, Mapping):
        return {str(key): as_dict(item, redact=redact) for key, item in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [as_dict(item, redact=redact) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
