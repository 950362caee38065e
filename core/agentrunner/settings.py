"""Platform settings: every environment variable of the reference, typed and validated once.

Where a value comes from, highest first:

1. the real environment (``os.environ``, or the ``environ`` mapping given to ``load_settings``);
2. ``.env`` in the working directory (python-dotenv syntax; ``${VAR}`` expands against the
   values above it in the file and the real environment);
3. the default below.

``NAME_FILE=/path`` reads the value of ``NAME`` from a file (Docker and Kubernetes secrets);
one trailing newline is stripped. An empty value counts as unset. Every bad value is
collected and reported at once in a ``SettingsError`` that names each variable; a secret's
value never appears in a message or a ``repr``.

The rest of the code receives a frozen ``Settings`` and reads attributes: the field of a
variable is its name in lower case (``ORCHESTRATOR_PORT`` → ``settings.orchestrator_port``).
Where the reference names one setting twice, the more specific variable's field holds the
effective value (``PRECEDENCE``); a full URL wins over its parts (``URL_PARTS``). Module
constants record the decisions for the README and the tests: ``VARIABLES``,
``DIFFERS_FROM_REFERENCE``, ``PRECEDENCE``, ``URL_PARTS``, ``DERIVED`` and ``NO_EFFECT``.
``Settings.environ`` keeps the merged environment for ``${VAR}`` in agent files.
"""

# The section declarers (_pg, _sec, …) return attrs fields; ruff takes them for dataclass
# defaults computed by a call.
# ruff: noqa: RUF009

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs

from agentrunner.eventloop import CHOICES as EVENT_LOOPS

__all__ = [
    "DERIVED",
    "DIFFERS_FROM_REFERENCE",
    "NO_EFFECT",
    "PRECEDENCE",
    "URL_PARTS",
    "VARIABLES",
    "Secret",
    "Settings",
    "SettingsError",
    "Variable",
    "load_settings",
    "read_environment",
]


class Secret:
    """A secret string (API key, password, token). Only ``get_secret_value()`` shows it.

    ``repr()``, ``str()`` and f-strings print ``**********``, so a secret that reaches a log
    line, an error or a ``repr(settings)`` stays hidden.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself: pass it to the client that needs it, nowhere else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


class SettingsError(ValueError):
    """One or more variables have bad values; ``problems`` holds one message per variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid settings:\n" + "\n".join(f"  {problem}" for problem in self.problems))


# --- Kinds of value ------------------------------------------------------------------------
# Each kind turns the text of a variable into a typed value or raises _Invalid with what it
# expects; the caller adds the variable's name (and the bad value, unless it is a secret).


class _Invalid(ValueError):
    """A value that does not fit its kind; the argument says what was expected."""


_INTEGER = re.compile(r"[+-]?\d+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" between {low:g} and {high:g}"
    if low is not None:
        return f" >= {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""


@attrs.frozen
class _Int:
    low: int | None = None
    high: int | None = None

    @property
    def type_name(self) -> str:
        return "integer" + _bounds(self.low, self.high).replace(" between", "").replace(" and ", "–")

    @property
    def expected(self) -> str:
        return "an integer" + _bounds(self.low, self.high)

    def parse(self, text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise _Invalid(self.expected)
        value = int(text)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise _Invalid(self.expected)
        return value

    def render(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class _Float:
    low: float | None = None
    high: float | None = None
    positive: bool = False  # > 0 rather than >= low: a timeout of 0 makes no sense

    @property
    def type_name(self) -> str:
        return "number > 0" if self.positive else "number" + _bounds(self.low, self.high)

    @property
    def expected(self) -> str:
        return "a number > 0" if self.positive else "a number" + _bounds(self.low, self.high)

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Invalid(self.expected) from None
        if value != value or value in (float("inf"), float("-inf")):  # nan, inf
            raise _Invalid(self.expected)
        if (self.positive and value <= 0) or (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise _Invalid(self.expected)
        return value

    def render(self, value: Any) -> str:
        return f"{value:g}"


@attrs.frozen
class _Bool:
    type_name = "boolean"
    expected = "a boolean (true/false, 1/0, yes/no, on/off)"

    def parse(self, text: str) -> bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _Invalid(self.expected)

    def render(self, value: Any) -> str:
        return "true" if value else "false"


@attrs.frozen
class _Str:
    pattern: str | None = None
    what: str = "a string"
    type_name: str = "string"

    @property
    def expected(self) -> str:
        return self.what

    def parse(self, text: str) -> str:
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise _Invalid(self.expected)
        return text

    def render(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class _Choice:
    choices: tuple[str, ...]
    upper: bool = False  # log levels are upper case, everything else lower case
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def type_name(self) -> str:
        return " | ".join(self.choices)

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def parse(self, text: str) -> str:
        value = text.upper() if self.upper else text.lower()
        value = dict(self.aliases).get(value, value)
        if value not in self.choices:
            raise _Invalid(self.expected)
        return value

    def render(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class _List:
    type_name = "list"
    expected = 'a JSON list of strings (["a","b"]) or comma-separated names (a,b)'

    def parse(self, text: str) -> tuple[str, ...]:
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                raise _Invalid(self.expected) from None
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise _Invalid(self.expected)
        else:
            items = text.split(",")
        return tuple(item.strip() for item in items if item.strip())

    def render(self, value: Any) -> str:
        return json.dumps(list(value), separators=(",", ":"))


@attrs.frozen
class _Size:
    low: int = 0
    type_name = "size"
    expected = "a size in bytes such as 1048576, 512K, 100M or 2GB (K, M, G, T = 1024, 1024², …)"

    def parse(self, text: str) -> int:
        match = _SIZE.fullmatch(text)
        if not match:
            raise _Invalid(self.expected)
        value = int(float(match[1]) * _SIZE_UNITS[match[2].lower()])
        if value < self.low:
            raise _Invalid(self.expected + f" of at least {self.low} bytes")
        return value

    def render(self, value: Any) -> str:
        for unit in ("T", "G", "M", "K"):
            factor = _SIZE_UNITS[unit.lower()]
            if value and value % factor == 0:
                return f"{value // factor}{unit}"
        return str(value)


@attrs.frozen
class _TimeZone:
    type_name = "time zone"
    expected = "an IANA time zone such as UTC or Europe/Paris"

    def parse(self, text: str) -> str:
        import zoneinfo  # only when a time zone is set: keeps load_settings light

        try:
            zoneinfo.ZoneInfo(text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise _Invalid(self.expected) from None
        return text

    def render(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class _Url:
    schemes: tuple[str, ...] = ("http", "https")
    type_name = "URL"

    @property
    def expected(self) -> str:
        return "a URL starting with " + " or ".join(f"{scheme}://" for scheme in self.schemes)

    def parse(self, text: str) -> str:
        try:
            parts = urlsplit(text)
        except ValueError:
            raise _Invalid(self.expected) from None
        if parts.scheme.lower() not in self.schemes or not (parts.netloc or parts.path):
            raise _Invalid(self.expected)
        return text

    def render(self, value: Any) -> str:
        return str(value)


@attrs.frozen
class _Secret:
    """A secret: the inner kind validates the text, the result is wrapped in ``Secret``."""

    inner: Any = _Str()

    @property
    def type_name(self) -> str:
        return "secret" if isinstance(self.inner, _Str) else f"secret {self.inner.type_name}"

    @property
    def expected(self) -> str:
        return self.inner.expected

    def parse(self, text: str) -> Secret:
        return Secret(self.inner.parse(text))

    def render(self, value: Any) -> str:
        return value.get_secret_value() if isinstance(value, Secret) else str(value)


_PORT = _Int(1, 65535)
_LOG_LEVEL = _Choice(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True, aliases=(("WARN", "WARNING"),))
_COUNT = _Int(0)  # sizes, counts, retries and milliseconds where 0 is meaningful
_POSITIVE = _Int(1)  # pool sizes, intervals and TTLs in whole seconds
_SECONDS = _Float(positive=True)  # connection and operation timeouts; fractions allowed
_NAME = _Str(r"[a-z0-9][a-z0-9_.-]*", "a lower-case name (letters, digits, _ . -)", "name")
_HEADER = _Str(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", "an HTTP header name", "header name")
_PATH = _Str(type_name="path")


# --- Declaring a setting -------------------------------------------------------------------


@attrs.frozen
class Variable:
    """One environment variable: its field in ``Settings``, kind, default and documentation."""

    name: str  #: the environment variable, e.g. ``ORCHESTRATOR_PORT``
    field: str  #: the attribute of ``Settings`` that holds it
    kind: Any
    default: Any
    help: str  #: one line: what it is for
    section: str  #: the heading it is documented under
    reference: str | None  #: the reference's default, when ours deliberately differs

    @property
    def secret(self) -> bool:
        """Whether the value is a ``Secret`` (never shown)."""
        return isinstance(self.kind, _Secret)

    @property
    def type_name(self) -> str:
        """The kind of value, for documentation."""
        return self.kind.type_name

    def render(self, value: Any) -> str:
        """The value as it would be written in ``.env`` ("" for unset)."""
        return "" if value is None else self.kind.render(value)


_META = "agentrunner.setting"


def _section(title: str) -> Callable[..., Any]:
    """A declarer of the settings of one documentation section.

    ``_ports(kind, default, help, reference=...)`` returns an attrs field whose metadata
    remembers the rest; ``reference`` is the reference's default where ours differs.
    """

    def declare(kind: Any, default: Any, help: str, *, reference: str | None = None) -> Any:
        return attrs.field(default=default, metadata={_META: (kind, help, title, reference)})

    return declare


_ports = _section("Service ports and addresses")
_backends = _section("Backends")
_pg = _section("PostgreSQL")
_redis = _section("Redis")
_mq = _section("RabbitMQ")
_llm = _section("LLM providers")
_state = _section("StateManager")
_conf = _section("ConfigurationService")
_orch = _section("AgentOrchestrator")
_sched = _section("SchedulerService (and the reference's Celery settings)")
_slack = _section("SlackGateway")
_log = _section("Logging")
_sec = _section("Security")
_perf = _section("Performance and metrics")
_plug = _section("Plugins")

_LAPTOP = "safe for a first run on a laptop"


@attrs.frozen(kw_only=True)
class Settings:
    """Every setting of the platform, typed; build it with ``load_settings()``.

    Constructing ``Settings(...)`` directly (tests do) applies no validation and no
    precedence rules: it is the plain record ``load_settings`` fills in. The three backend
    overrides are stored as ``_state_backend`` etc. (keyword ``state_backend=``); read the
    effective choice from the ``state_backend``, ``cache_backend`` and ``event_bus_backend``
    properties.
    """

    # Service ports and addresses
    state_manager_port: int = _ports(_PORT, 8001, "StateManager API port")
    config_service_port: int = _ports(_PORT, 8002, "ConfigurationService API port")
    orchestrator_port: int = _ports(_PORT, 8003, "AgentOrchestrator API port")
    scheduler_service_port: int = _ports(_PORT, 8004, "SchedulerService API port")
    slack_gateway_port: int = _ports(_PORT, 8005, "SlackGateway API port")
    bind_host: str = _ports(_Str(), "127.0.0.1", "address every service listens on (0.0.0.0 for all interfaces)")
    state_manager_host: str = _ports(_Str(), "localhost", "where the AgentOrchestrator's /health looks for the "
                                                          "StateManager when it runs apart")
    config_service_host: str = _ports(_Str(), "localhost", "where the AgentOrchestrator's /health looks for the "
                                                           "ConfigurationService when it runs apart")

    # Backends (unset: chosen from the hosts below; see the state_backend property)
    _state_backend: str | None = _backends(
        _NAME, None, "state store: sqlite, postgres, … (unset: chosen from DATABASE_URL / POSTGRES_HOST)"
    )
    _cache_backend: str | None = _backends(_NAME, None, "cache: memory, redis, … (unset: chosen from REDIS_HOST)")
    _event_bus_backend: str | None = _backends(
        _NAME, None, "event bus: memory, rabbitmq, … (unset: chosen from RABBITMQ_URL / RABBITMQ_HOST)"
    )
    sqlite_path: str = _backends(_PATH, "agentrunner.db", "file of the embedded SQLite state store")

    # PostgreSQL
    database_url: Secret | None = _pg(
        _Secret(_Url(("postgresql", "postgres"))), None, "full PostgreSQL URL; wins over the POSTGRES_* parts"
    )
    postgres_host: str | None = _pg(_Str(), None, "database hostname (set: PostgreSQL is the state store)",
                                    reference="postgres")
    postgres_port: int = _pg(_PORT, 5432, "database port")
    postgres_db: str = _pg(_Str(), "agentrunner", "database name")
    postgres_user: str = _pg(_Str(), "agentrunner", "database user")
    postgres_password: Secret | None = _pg(_Secret(), None, "database password", reference="secure_password")
    postgres_min_pool_size: int = _pg(_COUNT, 5, "minimum connections in the pool")
    postgres_max_pool_size: int = _pg(_POSITIVE, 20, "maximum connections in the pool")
    postgres_pool_timeout: float = _pg(_SECONDS, 30.0, "seconds to wait for a connection")
    postgres_pool_max_overflow: int = _pg(_COUNT, 10, "connections allowed above the pool size")
    postgres_statement_timeout: int = _pg(_COUNT, 30000, "query timeout in milliseconds, 0 for none")
    postgres_echo_sql: bool = _pg(_Bool(), False, "log every SQL statement (debug only: may log data)")
    db_auto_migrate: bool = _pg(_Bool(), True, "apply the schema migrations when the store starts "
                                               "(false: only check them; run `agentrunner db migrate`)")
    postgres_enable_query_cache: bool = _pg(_Bool(), True, "cache prepared statements (false behind pgbouncer)")
    postgres_ssl_mode: str = _pg(
        _Choice(("disable", "allow", "prefer", "require", "verify-ca", "verify-full")), "prefer", "libpq sslmode"
    )

    # Redis
    redis_host: str | None = _redis(_Str(), None, "Redis hostname (set: Redis is the cache)", reference="redis")
    redis_port: int = _redis(_PORT, 6379, "Redis port")
    redis_db: int = _redis(_Int(0, 15), 0, "Redis database number (0-15)")
    redis_password: Secret | None = _redis(_Secret(), None, "Redis password")
    redis_max_connections: int = _redis(_POSITIVE, 50, "maximum connections in the pool")
    redis_socket_timeout: float = _redis(_SECONDS, 5.0, "socket timeout in seconds")
    redis_socket_connect_timeout: float = _redis(_SECONDS, 5.0, "connection timeout in seconds")
    redis_default_ttl: int = _redis(_POSITIVE, 3600, "default cache TTL in seconds")
    redis_state_ttl: int = _redis(_POSITIVE, 1800, "agent state cache TTL in seconds")
    redis_config_ttl: int = _redis(_POSITIVE, 3600, "agent configuration cache TTL in seconds")
    redis_result_ttl: int = _redis(_POSITIVE, 300, "execution result cache TTL in seconds")
    redis_maxmemory: int | None = _redis(_Size(1), None, "Redis memory limit such as 2gb (a server setting)")
    redis_maxmemory_policy: str = _redis(
        _Choice(("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
                 "volatile-random", "volatile-ttl")),
        "allkeys-lru", "eviction policy when memory is full (a server setting)",
    )
    redis_ssl: bool = _redis(_Bool(), False, "connect with TLS")
    redis_key_prefix: str = _redis(_Str(), "agentrunner:", "prefix of every key agentrunner writes")

    # RabbitMQ
    rabbitmq_url: Secret | None = _mq(
        _Secret(_Url(("amqp", "amqps"))), None, "full AMQP URL; wins over the other RABBITMQ_* connection parts",
        reference="amqp://guest:guest@rabbitmq:5672//",
    )
    rabbitmq_host: str | None = _mq(_Str(), None, "RabbitMQ hostname (set: RabbitMQ is the event bus)",
                                    reference="rabbitmq")
    rabbitmq_port: int = _mq(_PORT, 5672, "AMQP port")
    rabbitmq_management_port: int = _mq(_PORT, 15672, "management UI port")
    rabbitmq_user: str = _mq(_Str(), "guest", "RabbitMQ user")
    rabbitmq_password: Secret | None = _mq(_Secret(), Secret("guest"), "RabbitMQ password")
    rabbitmq_vhost: str = _mq(_Str(), "/", "virtual host")
    rabbitmq_heartbeat: int = _mq(_COUNT, 60, "heartbeat interval in seconds, 0 for none")
    rabbitmq_connection_timeout: float = _mq(_SECONDS, 30.0, "connection timeout in seconds")
    rabbitmq_blocked_timeout: int = _mq(_COUNT, 300, "seconds a connection may stay blocked by the broker")
    rabbitmq_channel_max: int = _mq(_Int(1, 65535), 2047, "maximum channels per connection")
    rabbitmq_frame_max: int = _mq(_Int(4096), 131072, "maximum frame size in bytes")
    rabbitmq_prefetch_count: int = _mq(_COUNT, 10, "messages prefetched per consumer (a task consumer handles "
                                                   "each: those past its slots wait for one)")
    rabbitmq_consumer_timeout: int = _mq(_POSITIVE, 1800000, "consumer acknowledgement timeout in milliseconds")
    rabbitmq_queue_max_length: int = _mq(_POSITIVE, 10000, "maximum messages per queue")
    rabbitmq_message_ttl: int = _mq(_POSITIVE, 86400000, "message TTL in milliseconds (24 h)")
    rabbitmq_queue_expires: int = _mq(_POSITIVE, 300000, "unused queue auto-delete time in milliseconds")
    rabbitmq_ssl: bool = _mq(_Bool(), False, "connect with TLS (amqps)")
    rabbitmq_exchange: str = _mq(_Str(), "agentrunner", "the topic exchange of tasks and events")

    # LLM providers
    openai_api_key: Secret | None = _llm(_Secret(), None, "OpenAI API key", reference="sk-...")
    openai_org_id: str | None = _llm(_Str(), None, "OpenAI organization ID")
    openai_base_url: str | None = _llm(_Url(), None, "any OpenAI-compatible server (vLLM, LM Studio, a gateway)")
    anthropic_api_key: Secret | None = _llm(_Secret(), None, "Anthropic API key", reference="sk-ant-...")
    anthropic_base_url: str | None = _llm(_Url(), None, "Anthropic API URL")
    aws_access_key_id: Secret | None = _llm(_Secret(), None, "AWS access key (Bedrock)", reference="AKIA...")
    aws_secret_access_key: Secret | None = _llm(_Secret(), None, "AWS secret key (Bedrock)", reference="...")
    aws_region: str = _llm(_Str(), "us-east-1", "AWS region for Bedrock")
    aws_bedrock_endpoint: str | None = _llm(_Url(), None, "custom Bedrock endpoint")
    ollama_base_url: str = _llm(_Url(), "http://localhost:11434", "Ollama server URL")
    default_llm_provider: str = _llm(_NAME, "echo", "provider of an agent whose llm_config names none",
                                     reference="openai")
    default_llm_model: str = _llm(_Str(), "echo", "model of an agent whose llm_config names none",
                                  reference="gpt-3.5-turbo")

    # StateManager
    state_manager_log_level: str = _state(_LOG_LEVEL, "INFO", "StateManager log level (unset: LOG_LEVEL)")
    state_compression_enabled: bool = _state(_Bool(), True, "compress large values in the Redis cache")
    state_compression_threshold: int = _state(_COUNT, 1024, "compress cached values larger than this many bytes")
    state_save_interval: int = _state(_POSITIVE, 180, "default of continuous_config.save_interval_seconds")
    state_history_limit: int = _state(_POSITIVE, 100, "default of continuous_config.max_conversation_history")
    state_idle_timeout: int = _state(_POSITIVE, 900, "default of continuous_config.idle_timeout_seconds")
    state_cache_enabled: bool = _state(_Bool(), True, "cache agent state")
    state_cache_write_through: bool = _state(_Bool(), True, "write state to the cache and the store together")
    state_cache_ttl: int = _state(_POSITIVE, 1800, "state cache TTL in seconds (REDIS_STATE_TTL wins)")

    # ConfigurationService
    config_service_log_level: str = _conf(_LOG_LEVEL, "INFO", "ConfigurationService log level (unset: LOG_LEVEL)")
    config_dir: str = _conf(_PATH, "config", "configuration directory")
    config_agents_dir: str = _conf(_PATH, "config/agents", "agent YAML directory (unset: CONFIG_DIR/agents)")
    config_hot_reload: bool = _conf(_Bool(), True, "reload agents when their files change")
    config_watch_recursive: bool = _conf(_Bool(), True, "read and watch subdirectories too")
    config_validate_on_load: bool = _conf(_Bool(), True, "validate agent files when they load")
    config_strict_mode: bool = _conf(_Bool(), False, "treat validation warnings as errors")
    config_cache_enabled: bool = _conf(_Bool(), True, "cache agent configurations")
    config_cache_ttl: int = _conf(_POSITIVE, 3600, "configuration cache TTL in seconds (REDIS_CONFIG_TTL wins)")

    # AgentOrchestrator
    orchestrator_log_level: str = _orch(_LOG_LEVEL, "INFO", "AgentOrchestrator log level (unset: LOG_LEVEL)")
    orchestrator_worker_threads: int = _orch(_POSITIVE, 4, "worker thread pool size")
    task_routing_strategy: str = _orch(_Choice(("round_robin", "least_busy", "weighted")), "round_robin",
                                       "which worker takes a task")
    task_default_timeout: float = _orch(_SECONDS, 300.0, "timeout in seconds of a task whose agent sets none")
    task_max_retries: int = _orch(_COUNT, 3, "default of retry_config.max_retries")
    task_retry_delay: float = _orch(_Float(0), 5.0, "default of retry_config.retry_delay_seconds")
    agent_registration_timeout: int = _orch(_POSITIVE, 30, "seconds the agents get to register on the event bus "
                                                            "(queues, event bindings, agent.registered): a start "
                                                            "fails after it, a hot reload logs an error")
    agent_health_check_interval: int = _orch(_POSITIVE, 60, "seconds between heartbeats of worker processes")
    agent_unresponsive_threshold: int = _orch(_POSITIVE, 180, "seconds without a heartbeat before an agent is "
                                                              "unresponsive (agent.health.changed)")
    shutdown_grace_period: float = _orch(_Float(0), 30.0, "seconds SIGTERM waits for running executions")
    worker_weight: int = _orch(_POSITIVE, 1, "with TASK_ROUTING_STRATEGY=weighted: this process runs this many times "
                                             "its slots and takes that share of the tasks")
    agent_max_tool_steps: int = _orch(_POSITIVE, 10, "model turns with tool calls one model call may take; "
                                                     "more fail the execution")
    agent_tool_repeat_limit: int = _orch(_POSITIVE, 3, "the same tool with identical arguments this many times "
                                                       "in a row fails the execution")
    tool_max_response_bytes: int = _orch(_Size(1), 1024**2, "largest answer an api or mcp tool may give (such as 1mb)")
    execution_max_tokens: int = _orch(_COUNT, 0, "LLM tokens (input + output) one execution may use; more fail "
                                                "it (0: no limit)")
    execution_max_tool_calls: int = _orch(_COUNT, 0, "tool calls one execution may make; more fail it (0: no limit)")

    # SchedulerService and the reference's Celery settings
    scheduler_log_level: str = _sched(_LOG_LEVEL, "INFO", "SchedulerService log level (unset: LOG_LEVEL)")
    scheduler_timezone: str = _sched(_TimeZone(), "UTC", "default time zone of cron schedules")
    scheduler_misfire_grace: float = _sched(_Float(0), 300.0, "seconds after its time a missed tick still "
                                                               "fires (once) when the scheduler comes back")
    celery_broker_url: Secret | None = _sched(_Secret(), None, "Celery broker", reference="${RABBITMQ_URL}")
    celery_result_backend: Secret | None = _sched(_Secret(), None, "Celery result backend",
                                                  reference="redis://${REDIS_HOST}:${REDIS_PORT}/1")
    celery_task_serializer: str = _sched(_Str(), "json", "Celery task serialization format")
    celery_result_serializer: str = _sched(_Str(), "json", "Celery result serialization format")
    celery_accept_content: tuple[str, ...] = _sched(_List(), ("json",), "Celery accepted content types")
    celery_timezone: str = _sched(_TimeZone(), "UTC", "Celery time zone (SCHEDULER_TIMEZONE wins)")
    celery_beat_schedule_filename: str = _sched(_PATH, "celerybeat-schedule", "Celery beat schedule file")
    celery_worker_concurrency: int = _sched(_POSITIVE, 2,
                                            "concurrent tasks per worker (WORKER_THREADS_PER_PROCESS wins)")
    celery_worker_max_tasks_per_child: int = _sched(_COUNT, 100, "restart a worker child after N tasks")
    celery_worker_prefetch_multiplier: int = _sched(_COUNT, 4, "Celery prefetch multiplier")
    celery_task_time_limit: float = _sched(_SECONDS, 600.0, "hard limit in seconds: a task still running is abandoned")
    celery_task_soft_time_limit: float = _sched(_SECONDS, 540.0, "soft limit in seconds: a task is cancelled")
    celery_task_acks_late: bool = _sched(_Bool(), True, "acknowledge a task after it completes")
    celery_task_reject_on_worker_lost: bool = _sched(_Bool(), True, "requeue a task whose worker died")

    # SlackGateway
    slack_gateway_log_level: str = _slack(_LOG_LEVEL, "INFO", "SlackGateway log level (unset: LOG_LEVEL)")
    slack_bot_token: Secret | None = _slack(_Secret(), None, "Slack bot token (xoxb-…)", reference="xoxb-...")
    slack_app_token: Secret | None = _slack(_Secret(), None, "Slack app token (xapp-…): set, Socket Mode is used",
                                            reference="xapp-...")
    slack_signing_secret: Secret | None = _slack(_Secret(), None, "Slack signing secret", reference="...")
    slack_webhook_path: str = _slack(_Str(r"/\S*", "a path starting with /", "path"), "/slack/events",
                                     "webhook endpoint path")
    slack_verify_signature: bool = _slack(_Bool(), True, "verify request signatures")
    slack_signature_version: str = _slack(_Choice(("v0",)), "v0", "signature version")
    slack_rate_limit_enabled: bool = _slack(_Bool(), True, "rate-limit outgoing Slack calls")
    slack_rate_limit_calls: int = _slack(_POSITIVE, 1, "calls per period")
    slack_rate_limit_period: float = _slack(_SECONDS, 1.0, "rate limit period in seconds")
    slack_max_retry_attempts: int = _slack(_COUNT, 3, "retries of a failed Slack call")
    slack_retry_delay: float = _slack(_Float(0), 1.0, "first retry delay in seconds")
    slack_retry_exponential_base: float = _slack(_Float(1), 2.0, "exponential backoff base")
    slack_response_timeout: int = _slack(_POSITIVE, 100, "response timeout in milliseconds")
    slack_ephemeral_responses: bool = _slack(_Bool(), False, "answer with ephemeral messages")
    slack_api_url: str = _slack(_Url(), "https://slack.com/api/", "Slack Web API URL (a fake one in tests)")

    # Logging
    log_level: str = _log(_LOG_LEVEL, "INFO", "global log level, and the default of each *_LOG_LEVEL")
    log_format: str = _log(_Choice(("json", "text")), "text", "json: one JSON object a line", reference="json")
    log_output: str = _log(_Choice(("stdout", "file")), "stdout", "where logs go")
    log_file_path: str = _log(_PATH, "agentrunner.log", "log file when LOG_OUTPUT=file",
                              reference="/var/log/agentrunner.log")
    log_max_size: int = _log(_Size(1), 100 * 1024**2, "rotate at this size (with LOG_ROTATION=size)")
    log_backup_count: int = _log(_COUNT, 10, "rotated files kept")
    log_rotation: str = _log(_Choice(("daily", "weekly", "size")), "daily", "when the log file rotates")

    # Security
    environment: str = _sec(_Choice(("development", "staging", "production")), "development",
                            "production refuses unsafe settings", reference="production")
    api_auth_enabled: bool = _sec(_Bool(), False, "require the API key on every request", reference="true")
    api_key_header: str = _sec(_HEADER, "X-API-Key", "header that carries the API key")
    api_key: Secret | None = _sec(_Secret(), None, "the API key (32+ characters: openssl rand -base64 32)",
                                  reference="your-secure-api-key")
    tls_enabled: bool = _sec(_Bool(), False, "serve every port over TLS", reference="true")
    tls_cert_path: str = _sec(_PATH, "/etc/certs/server.crt", "TLS certificate")
    tls_key_path: str = _sec(_PATH, "/etc/certs/server.key", "TLS private key")
    tls_ca_path: str | None = _sec(_PATH, None, "CA for client certificates (set: client certificates required)",
                                   reference="/etc/certs/ca.crt")
    tls_min_version: str = _sec(_Choice(("TLSv1.2", "TLSv1.3"), upper=False, aliases=(("tlsv1.2", "TLSv1.2"),
                                                                                       ("tlsv1.3", "TLSv1.3"))),
                                "TLSv1.2", "oldest TLS version accepted")
    tls_ciphers: str | None = _sec(_Str(), None, "OpenSSL cipher list (unset: Python's defaults)",
                                   reference="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    cors_enabled: bool = _sec(_Bool(), False, "answer CORS requests", reference="true")
    cors_origins: tuple[str, ...] = _sec(_List(), (), "allowed origins", reference='["https://app.example.com"]')
    cors_methods: tuple[str, ...] = _sec(_List(), ("GET", "POST", "PUT", "DELETE"), "allowed methods")
    cors_headers: tuple[str, ...] = _sec(_List(), ("Content-Type", "Authorization"),
                                         "allowed headers (API_KEY_HEADER is always allowed)")
    rate_limit_enabled: bool = _sec(_Bool(), False, "rate-limit requests per API key or client",
                                    reference="true")
    rate_limit_per_minute: int = _sec(_POSITIVE, 60, "requests a minute (token bucket refill)")
    rate_limit_burst: int = _sec(_POSITIVE, 10, "requests allowed at once (token bucket size)")

    # Performance and metrics
    worker_processes: int = _perf(_POSITIVE, 4, "worker processes")
    worker_threads_per_process: int = _perf(_POSITIVE, 2,
                                            "executions at once per worker process (in all: WORKER_PROCESSES × this)")
    worker_max_requests: int = _perf(_COUNT, 1000, "restart a worker after N requests")
    worker_max_requests_jitter: int = _perf(_COUNT, 100, "random jitter added to WORKER_MAX_REQUESTS")
    db_pool_size: int = _perf(_POSITIVE, 20, "database pool size (POSTGRES_MAX_POOL_SIZE wins)")
    db_pool_overflow: int = _perf(_COUNT, 10, "database overflow connections (POSTGRES_POOL_MAX_OVERFLOW wins)")
    redis_pool_size: int = _perf(_POSITIVE, 50, "Redis pool size (REDIS_MAX_CONNECTIONS wins)")
    rabbitmq_pool_size: int = _perf(_POSITIVE, 10, "RabbitMQ connection pool size")
    request_timeout: float = _perf(_SECONDS, 30.0, "HTTP request timeout in seconds")
    db_query_timeout: float = _perf(_SECONDS, 30.0, "query timeout in seconds (POSTGRES_STATEMENT_TIMEOUT wins)")
    cache_operation_timeout: float = _perf(_SECONDS, 5.0, "cache operation timeout in seconds")
    event_loop: str = _perf(_Choice(EVENT_LOOPS), "auto",
                            "event loop of serve, worker and run: auto (uvloop when installed), uvloop, asyncio")
    prometheus_enabled: bool = _perf(_Bool(), False, "serve Prometheus metrics")
    metrics_port: int = _perf(_PORT, 9090, "port of /metrics")

    # Plugins
    agentrunner_disabled_plugins: tuple[str, ...] = _plug(_List(), (), "plugins left out, by name")

    #: Names of the variables given in the environment or ``.env`` (directly or as NAME_FILE).
    set_variables: frozenset[str] = attrs.field(factory=frozenset, repr=False)
    #: The environment merged with ``.env`` (``read_environment``), for ``${VAR}`` in agent files;
    #: None when the settings were built directly. Holds secrets, hence no repr.
    environ: Mapping[str, str] | None = attrs.field(default=None, repr=False, eq=False)

    # --- Backend selection ------------------------------------------------------------------

    @property
    def state_backend(self) -> str:
        """The state store: STATE_BACKEND, else postgres if DATABASE_URL or POSTGRES_HOST is set, else sqlite."""
        if self._state_backend:
            return self._state_backend
        return "postgres" if self.database_url or self.postgres_host else "sqlite"

    @property
    def cache_backend(self) -> str:
        """The cache: CACHE_BACKEND, else redis if REDIS_HOST is set, else memory."""
        if self._cache_backend:
            return self._cache_backend
        return "redis" if self.redis_host else "memory"

    @property
    def event_bus_backend(self) -> str:
        """The event bus: EVENT_BUS_BACKEND, else rabbitmq if RABBITMQ_URL or RABBITMQ_HOST is set, else memory."""
        if self._event_bus_backend:
            return self._event_bus_backend
        return "rabbitmq" if self.rabbitmq_url or self.rabbitmq_host else "memory"

    # --- Connections built from their parts -------------------------------------------------

    @property
    def postgres_dsn(self) -> Secret | None:
        """The PostgreSQL URL: DATABASE_URL as it is, else built from POSTGRES_*; None without a host."""
        if self.database_url:
            return self.database_url
        if not self.postgres_host:
            return None
        password = self.postgres_password.get_secret_value() if self.postgres_password else ""
        auth = quote(self.postgres_user, safe="") + (":" + quote(password, safe="") if password else "")
        return Secret(
            f"postgresql://{auth}@{_url_host(self.postgres_host)}:{self.postgres_port}/"
            f"{quote(self.postgres_db, safe='')}?sslmode={self.postgres_ssl_mode}"
        )

    @property
    def amqp_url(self) -> Secret | None:
        """The AMQP URL: RABBITMQ_URL as it is, else built from RABBITMQ_*; None without a host."""
        if self.rabbitmq_url:
            return self.rabbitmq_url
        if not self.rabbitmq_host:
            return None
        password = self.rabbitmq_password.get_secret_value() if self.rabbitmq_password else ""
        scheme = "amqps" if self.rabbitmq_ssl else "amqp"
        auth = quote(self.rabbitmq_user, safe="") + (":" + quote(password, safe="") if password else "")
        # The virtual host is the URL's path with "/" escaped: "/" becomes "%2F".
        return Secret(
            f"{scheme}://{auth}@{_url_host(self.rabbitmq_host)}:{self.rabbitmq_port}/"
            f"{quote(self.rabbitmq_vhost, safe='')}?heartbeat={self.rabbitmq_heartbeat}"
        )

    # --- Checks -----------------------------------------------------------------------------

    def production_problems(self) -> list[str]:
        """Why these settings must not run with ENVIRONMENT=production (empty otherwise).

        Messages name the variable and never show a secret's value.
        """
        if self.environment != "production":
            return []
        problems = []
        if not self.api_auth_enabled:
            problems.append("API_AUTH_ENABLED must be true when ENVIRONMENT=production")
        key = self.api_key.get_secret_value() if self.api_key else ""
        if key.lower().startswith("your-secure-api-key"):
            problems.append("API_KEY is the reference's placeholder (your-secure-api-key…): generate a real key "
                            "with `openssl rand -base64 32`")
        elif len(key) < 32:
            problems.append("API_KEY must be set to at least 32 characters when ENVIRONMENT=production "
                            "(generate one with `openssl rand -base64 32`)")
        for variable in VARIABLES.values():
            value = getattr(self, variable.field)
            # The reference's examples end in "..." (sk-..., xoxb-..., ...): never a real secret.
            if variable.secret and value and value.get_secret_value().endswith("..."):
                problems.append(f"{variable.name} is a placeholder from the reference: set the real value")
        if self.postgres_password and self.postgres_password.get_secret_value() == "secure_password":
            problems.append("POSTGRES_PASSWORD is the reference's placeholder (secure_password): set a strong one")
        if self.database_url and _url_password(self.database_url) == "secure_password":
            problems.append("DATABASE_URL holds the reference's placeholder password (secure_password)")
        if self.rabbitmq_url:
            if _url_credentials(self.rabbitmq_url) == ("guest", "guest"):
                problems.append("RABBITMQ_URL uses RabbitMQ's default guest/guest credentials: create a user")
        elif self.event_bus_backend == "rabbitmq" or {"RABBITMQ_USER", "RABBITMQ_PASSWORD"} & self.set_variables:
            password = self.rabbitmq_password.get_secret_value() if self.rabbitmq_password else ""
            if (self.rabbitmq_user, password) == ("guest", "guest"):
                problems.append("RABBITMQ_USER/RABBITMQ_PASSWORD are RabbitMQ's default guest/guest: create a user")
        if self.slack_bot_token and not self.slack_verify_signature:
            problems.append("SLACK_VERIFY_SIGNATURE must be true when ENVIRONMENT=production")
        return problems

    def production_warnings(self) -> list[str]:
        """What is allowed but unwise with ENVIRONMENT=production (``validate`` and ``serve`` say it)."""
        if self.environment != "production":
            return []
        warnings = []
        password = (_url_password(self.database_url) if self.database_url else
                    self.postgres_password.get_secret_value() if self.postgres_password else None)
        if self.state_backend == "postgres" and password is not None and len(password) < 16:
            warnings.append("the PostgreSQL password is shorter than 16 characters")
        if self.state_backend == "postgres" and self.postgres_ssl_mode in ("disable", "allow", "prefer") and \
                not (self.database_url and "sslmode=" in self.database_url.get_secret_value()):
            warnings.append(f"PostgreSQL without required TLS (POSTGRES_SSL_MODE={self.postgres_ssl_mode}; "
                            "use require or verify-full)")
        if self.cache_backend == "redis" and not self.redis_ssl:
            warnings.append("Redis without TLS (REDIS_SSL=false)")
        if self.event_bus_backend == "rabbitmq":
            url = self.amqp_url.get_secret_value() if self.amqp_url else ""
            if not url.startswith("amqps://"):
                warnings.append("RabbitMQ without TLS (RABBITMQ_SSL=false / an amqp:// URL)")
        if not self.tls_enabled:
            warnings.append("the HTTP services without TLS (TLS_ENABLED=false): put a TLS proxy in front")
        return warnings

    def no_effect_set(self) -> list[str]:
        """One line per variable that was set but does nothing, saying why (for ``agentrunner validate``).

        That is a variable of ``NO_EFFECT``, or the loser of a name the reference gives twice
        (``PRECEDENCE``, ``URL_PARTS``) whose winner is set too. A variable set to its default
        is left out: it changes nothing either way (and a copied ``.env.example`` sets them all).
        """
        notes = []
        for name, variable in VARIABLES.items():
            if name not in self.set_variables or getattr(self, variable.field) == variable.default:
                continue
            if name in NO_EFFECT:
                notes.append(f"{name} is accepted but has no effect: {NO_EFFECT[name]}")
                continue
            winners = [winner for winner, loser, _note in PRECEDENCE if loser == name and winner in self.set_variables]
            winners += [url for url, parts in URL_PARTS.items() if name in parts and url in self.set_variables]
            if winners:
                notes.append(f"{name} has no effect: {winners[0]} is set too and wins")
        return notes


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _url_credentials(url: Secret) -> tuple[str, str]:
    try:
        parts = urlsplit(url.get_secret_value())
    except ValueError:
        return ("", "")
    return (unquote(parts.username or ""), unquote(parts.password or ""))


def _url_password(url: Secret) -> str:
    return _url_credentials(url)[1]


def _variables() -> dict[str, Variable]:
    variables = {}
    for field in attrs.fields(Settings):
        if _META not in field.metadata:
            continue
        kind, help, section, reference = field.metadata[_META]
        name = field.name.lstrip("_").upper()
        variables[name] = Variable(name, field.name, kind, field.default, help, section, reference)
    return variables


#: Every variable, by name, in documentation order.
VARIABLES: dict[str, Variable] = _variables()


#: Defaults that deliberately differ from the reference's (whose examples look like production).
DIFFERS_FROM_REFERENCE: dict[str, str] = {
    "ENVIRONMENT": f"{_LAPTOP}; production turns on the start-up checks",
    "API_AUTH_ENABLED": f"{_LAPTOP} (services listen on 127.0.0.1 only); required in production",
    "API_KEY": "a placeholder is not a key: unset until you generate one (required in production)",
    "TLS_ENABLED": f"{_LAPTOP}: needs a certificate",
    "TLS_CA_PATH": "setting it requires client certificates, which should be a choice",
    "TLS_CIPHERS": "Python's maintained defaults; the reference's list allows RSA certificates only",
    "CORS_ENABLED": f"{_LAPTOP}: no browser front end by default",
    "CORS_ORIGINS": "app.example.com is a placeholder",
    "RATE_LIMIT_ENABLED": _LAPTOP,
    "LOG_FORMAT": "text reads better in a terminal; use json in production",
    "LOG_FILE_PATH": "/var/log needs root; relative to the working directory",
    "POSTGRES_HOST": "unset keeps the embedded SQLite store; set it to use PostgreSQL",
    "POSTGRES_PASSWORD": "a placeholder is not a password",
    "REDIS_HOST": "unset keeps the in-memory cache; set it to use Redis",
    "RABBITMQ_HOST": "unset keeps the in-memory event bus; set it to use RabbitMQ",
    "RABBITMQ_URL": "unset keeps the in-memory event bus; set it to use RabbitMQ",
    "OPENAI_API_KEY": "a placeholder is not a key",
    "ANTHROPIC_API_KEY": "a placeholder is not a key",
    "AWS_ACCESS_KEY_ID": "a placeholder is not a key",
    "AWS_SECRET_ACCESS_KEY": "a placeholder is not a key",
    "SLACK_BOT_TOKEN": "a placeholder is not a token",
    "SLACK_APP_TOKEN": "a placeholder is not a token; set, it turns on Socket Mode",
    "SLACK_SIGNING_SECRET": "a placeholder is not a secret",
    "CELERY_BROKER_URL": "there is no Celery: schedules fire in-process",
    "CELERY_RESULT_BACKEND": "there is no Celery: results are stored by the state store",
    "DEFAULT_LLM_PROVIDER": "the built-in echo provider needs no network and no key",
    "DEFAULT_LLM_MODEL": "the model of the echo provider",
}

#: Names the reference gives one setting twice: (winner, loser, what it is). The winner's
#: field holds the effective value; the loser counts only when the winner is unset.
PRECEDENCE: list[tuple[str, str, str]] = [
    ("POSTGRES_MAX_POOL_SIZE", "DB_POOL_SIZE", "maximum connections in the PostgreSQL pool"),
    ("POSTGRES_POOL_MAX_OVERFLOW", "DB_POOL_OVERFLOW", "PostgreSQL connections allowed above the pool size"),
    ("POSTGRES_STATEMENT_TIMEOUT", "DB_QUERY_TIMEOUT", "query timeout; DB_QUERY_TIMEOUT's seconds become milliseconds"),
    ("REDIS_MAX_CONNECTIONS", "REDIS_POOL_SIZE", "maximum connections in the Redis pool"),
    ("REDIS_STATE_TTL", "STATE_CACHE_TTL", "seconds agent state stays in the cache"),
    ("REDIS_CONFIG_TTL", "CONFIG_CACHE_TTL", "seconds an agent configuration stays in the cache"),
    ("SCHEDULER_TIMEZONE", "CELERY_TIMEZONE", "default time zone of cron schedules"),
    ("WORKER_THREADS_PER_PROCESS", "CELERY_WORKER_CONCURRENCY", "executions at once per worker process"),
    ("WORKER_MAX_REQUESTS", "CELERY_WORKER_MAX_TASKS_PER_CHILD", "tasks a worker process runs before it is replaced"),
    ("CONFIG_AGENTS_DIR", "CONFIG_DIR", "agents directory; unset, it is CONFIG_DIR/agents"),
    ("STATE_MANAGER_LOG_LEVEL", "LOG_LEVEL", "log level of the StateManager"),
    ("CONFIG_SERVICE_LOG_LEVEL", "LOG_LEVEL", "log level of the ConfigurationService"),
    ("ORCHESTRATOR_LOG_LEVEL", "LOG_LEVEL", "log level of the AgentOrchestrator"),
    ("SCHEDULER_LOG_LEVEL", "LOG_LEVEL", "log level of the SchedulerService"),
    ("SLACK_GATEWAY_LOG_LEVEL", "LOG_LEVEL", "log level of the SlackGateway"),
]

#: How a loser's value becomes the winner's, where the units differ (the rest copy it as is).
_CONVERT: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("POSTGRES_STATEMENT_TIMEOUT", "DB_QUERY_TIMEOUT"): lambda seconds: round(seconds * 1000),
    ("CONFIG_AGENTS_DIR", "CONFIG_DIR"): lambda config_dir: str(Path(config_dir) / "agents"),
}

#: A full URL wins over the variables that give its parts: ``postgres_dsn`` and ``amqp_url``
#: use the URL as it is and ignore the parts (which stay in their own fields).
URL_PARTS: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
                     "POSTGRES_SSL_MODE"),
    "RABBITMQ_URL": ("RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_VHOST",
                     "RABBITMQ_HEARTBEAT", "RABBITMQ_SSL"),
}

#: Properties and methods of ``Settings`` computed from variables: reading one uses them all.
DERIVED: dict[str, tuple[str, ...]] = {
    "state_backend": ("STATE_BACKEND", "DATABASE_URL", "POSTGRES_HOST"),
    "cache_backend": ("CACHE_BACKEND", "REDIS_HOST"),
    "event_bus_backend": ("EVENT_BUS_BACKEND", "RABBITMQ_URL", "RABBITMQ_HOST"),
    "postgres_dsn": ("DATABASE_URL", *URL_PARTS["DATABASE_URL"]),
    "amqp_url": ("RABBITMQ_URL", *URL_PARTS["RABBITMQ_URL"]),
    "production_problems": ("ENVIRONMENT",),
}


def _no_effect(reason: str, *names: str) -> dict[str, str]:
    return dict.fromkeys(names, reason)




#: Variables accepted (and validated) that no code uses, with the reason; ``agentrunner
#: validate`` names the ones that are set. A test keeps this true: a variable read by code
#: must not be here, and one read by none must be.
NO_EFFECT: dict[str, str] = {
    # The reference's scheduler runs on Celery; here schedules fire in-process and their tasks
    # travel on the event bus, so these have no equivalent.
    **_no_effect("Celery-specific: schedules fire in-process and their tasks travel on the event bus",
                 "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_SERIALIZER", "CELERY_RESULT_SERIALIZER",
                 "CELERY_ACCEPT_CONTENT", "CELERY_BEAT_SCHEDULE_FILENAME"),
    **_no_effect("Celery-specific: the event bus prefetches RABBITMQ_PREFETCH_COUNT messages",
                 "CELERY_WORKER_PREFETCH_MULTIPLIER"),
    **_no_effect("always on: a task is acknowledged only after its result is stored",
                 "CELERY_TASK_ACKS_LATE"),
    **_no_effect("always on: the task of a worker that dies is delivered again", "CELERY_TASK_REJECT_ON_WORKER_LOST"),
    **_no_effect("agent configurations are always held in memory and reloaded on change",
                 "CONFIG_CACHE_ENABLED"),
    **_no_effect("agent files are always validated: loading one is structuring it, which is the validation",
                 "CONFIG_VALIDATE_ON_LOAD"),
    # (DATABASE_URL, POSTGRES_HOST, REDIS_HOST, RABBITMQ_URL and RABBITMQ_HOST are not here: they
    # choose the backend, and start-up names the plugin to install.)
}


# --- Loading -----------------------------------------------------------------------------


def read_environment(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> dict[str, str]:
    """The variables ``load_settings`` sees: ``env_file`` (if it exists) overlaid with ``environ``.

    ``environ`` defaults to ``os.environ`` and wins over the file. ``${VAR}`` and
    ``${VAR:-default}`` in the file expand against the file's earlier lines and ``environ``
    (``environ`` winning here too); values from ``environ`` are taken as they are. Lines
    without ``=`` are ignored; a line that cannot be parsed raises ``SettingsError``.
    Other code may use this to expand ``${VAR}`` with ``.env`` (``Settings.environ`` holds it).
    """
    values, problems = _read_environment(environ, env_file)
    if problems:
        raise SettingsError(problems)
    return values


def _read_environment(environ: Mapping[str, str] | None, env_file: str | Path | None) -> tuple[dict[str, str],
                                                                                                 list[str]]:
    environ = dict(os.environ if environ is None else environ)
    if env_file is None or not Path(env_file).is_file():
        return environ, []
    # python-dotenv's parser and ${VAR} grammar (what dotenv_values uses), but resolved against the
    # given environ: dotenv's own interpolation reads os.environ and lets the file win over it,
    # the opposite of our precedence. Its parser also reports the lines it cannot read, which
    # dotenv_values would only log.
    from dotenv.parser import parse_stream
    from dotenv.variables import parse_variables

    resolved: dict[str, str] = {}
    problems = []
    with open(env_file, encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                # Only the line number: the line may hold a secret.
                problems.append(f"{env_file}: line {binding.original.line} cannot be parsed (expected NAME=value)")
            elif binding.key is not None and binding.value is not None:
                scope = {**resolved, **environ}
                resolved[binding.key] = "".join(atom.resolve(scope) for atom in parse_variables(binding.value))
    return {**resolved, **environ}, problems


def _shown(text: str) -> str:
    """A bad value as a message shows it: quoted, and cut short (a long value may be pasted by mistake)."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Read, validate and resolve every setting; raise ``SettingsError`` listing every bad value.

    ``environ`` defaults to ``os.environ``; ``env_file`` (default ``.env`` in the working
    directory, None for none) is read when it exists, and the environment wins over it.
    """
    values, problems = _read_environment(environ, env_file)
    parsed: dict[str, Any] = {}  # variable name → typed value, for the variables that are set
    for name, variable in VARIABLES.items():
        text = values.get(name, "")
        file_name = values.get(f"{name}_FILE", "")
        if text and file_name:
            problems.append(f"{name} and {name}_FILE are both set: set only one")
            continue
        if file_name:
            try:
                text = Path(file_name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{name}_FILE: cannot read {file_name!r} ({getattr(exc, 'strerror', None) or exc})")
                continue
            text = text.removesuffix("\n").removesuffix("\r")  # one trailing newline, as editors add it
            if not text:
                problems.append(f"{name}_FILE: {file_name!r} is empty")
                continue
        text = text.strip() if not variable.secret else text  # a secret's spaces may be part of it
        if not text:
            continue  # an empty value counts as unset
        try:
            parsed[name] = variable.kind.parse(text)
        except _Invalid as exc:
            got = "the value is not shown: it is a secret" if variable.secret else f"got {_shown(text)}"
            problems.append(f"{name}: expected {exc} ({got})")

    fields = {VARIABLES[name].field: value for name, value in parsed.items()}
    # The more specific name wins; the other one counts only when the specific one is unset — and,
    # where their defaults differ, only when it is set to something other than its own default (the
    # reference's .env lists CELERY_WORKER_MAX_TASKS_PER_CHILD=100, which must not halve WORKER_MAX_REQUESTS).
    for winner, loser, _note in PRECEDENCE:
        if winner in parsed or loser not in parsed:
            continue
        convert = _CONVERT.get((winner, loser), lambda value: value)
        loser_default = VARIABLES[loser].default
        if parsed[loser] == loser_default and convert(loser_default) != VARIABLES[winner].default:
            continue
        fields[VARIABLES[winner].field] = convert(parsed[loser])

    settings = Settings(**{field.lstrip("_"): value for field, value in fields.items()},
                        set_variables=frozenset(parsed), environ=MappingProxyType(values))
    problems += _cross_checks(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _cross_checks(settings: Settings) -> list[str]:
    """Rules between variables, checked on the effective values."""
    problems = []
    if settings.postgres_min_pool_size > settings.postgres_max_pool_size:
        problems.append(f"POSTGRES_MIN_POOL_SIZE: must not exceed POSTGRES_MAX_POOL_SIZE "
                        f"({settings.postgres_min_pool_size} > {settings.postgres_max_pool_size})")
    if settings.celery_task_soft_time_limit > settings.celery_task_time_limit:
        problems.append(f"CELERY_TASK_SOFT_TIME_LIMIT: must not exceed CELERY_TASK_TIME_LIMIT "
                        f"({settings.celery_task_soft_time_limit:g} > {settings.celery_task_time_limit:g})")
    return problems
