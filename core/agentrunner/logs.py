"""Logging as the reference's Logging section describes it.

- ``LOG_FORMAT=json`` writes one JSON object a line (``timestamp``, ``level``, ``component``,
  ``message``, and ``trace_id``, ``execution_id``, ``agent`` when a line belongs to an execution,
  ``exception`` with the traceback); ``text`` writes the same in plain lines.
- ``LOG_OUTPUT=file`` writes to ``LOG_FILE_PATH``, rotated by size (``LOG_ROTATION=size``,
  ``LOG_MAX_SIZE``) or daily/weekly, keeping ``LOG_BACKUP_COUNT`` files.
- ``LOG_LEVEL`` sets every logger; ``STATE_MANAGER_LOG_LEVEL``, ``CONFIG_SERVICE_LOG_LEVEL``,
  ``ORCHESTRATOR_LOG_LEVEL``, ``SCHEDULER_LOG_LEVEL``, ``SLACK_GATEWAY_LOG_LEVEL`` their component.
- Every line an execution causes — the orchestrator's, a provider's, a tool's — carries its ids,
  through a context variable the orchestrator sets while the execution runs.
- A redaction filter on the handler replaces every configured secret (API keys, tokens, passwords,
  tool credentials from ``${VAR}``) in every line, whoever logged it, with ``***``. While a platform
  runs, the records themselves are redacted as they are made (``redact_records``), so that the
  handlers of a program embedding agentrunner, or of a test runner, never see a secret either.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import sys
import time
from collections.abc import Callable
from typing import Any

#: The execution the running code belongs to: {"trace_id", "execution_id", "agent"}.
EXECUTION: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("agentrunner_execution",
                                                                                 default=None)
EXECUTION_FIELDS = ("trace_id", "execution_id", "agent")

#: logger name prefix → the component it belongs to and the setting of its level
COMPONENTS: dict[str, tuple[str, str]] = {
    "agentrunner.state": ("StateManager", "state_manager_log_level"),
    "agentrunner.store": ("StateManager", "state_manager_log_level"),
    "agentrunner.config": ("ConfigurationService", "config_service_log_level"),
    "agentrunner.orchestrator": ("AgentOrchestrator", "orchestrator_log_level"),
    "agentrunner.runtime": ("AgentOrchestrator", "orchestrator_log_level"),
    "agentrunner.worker": ("AgentOrchestrator", "orchestrator_log_level"),
    "agentrunner.bus": ("AgentOrchestrator", "orchestrator_log_level"),
    "agentrunner.http": ("AgentOrchestrator", "orchestrator_log_level"),
    "agentrunner.scheduler": ("SchedulerService", "scheduler_log_level"),
    "agentrunner.gateway": ("SlackGateway", "slack_gateway_log_level"),
    "agentrunner_slack": ("SlackGateway", "slack_gateway_log_level"),
}


def component_of(logger_name: str) -> str:
    for prefix, (component, _setting) in COMPONENTS.items():
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return component
    return logger_name.split(".", 1)[0]


class ExecutionFilter(logging.Filter):
    """Adds the ids of the execution the record was logged in (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = EXECUTION.get()
        if current:
            for field in EXECUTION_FIELDS:
                if not hasattr(record, field) and current.get(field):
                    setattr(record, field, current[field])
        return True


def redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Replace every secret in the final text of a record (message, arguments, traceback, ids)."""
    message = record.getMessage()
    redacted = redact(message)
    if redacted != message or record.args:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for field in EXECUTION_FIELDS:
        value = getattr(record, field, None)
        if isinstance(value, str):
            setattr(record, field, redact(value))


class RedactionFilter(logging.Filter):
    """Replaces every secret in the final text of a record (message, arguments, traceback)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redact)
        return True


#: the redactions of the platforms running in this process, applied to every record as it is made
_RECORD_REDACTIONS: list[Callable[[str], str]] = []
_made_by: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = (_made_by or logging.LogRecord)(*args, **kwargs)
    for redact in list(_RECORD_REDACTIONS):
        try:
            redact_record(record, redact)
        except Exception:  # a record whose arguments do not format: logging reports it when it is written
            break
    return record


def redact_records(redact: Callable[[str], str]) -> Callable[[], None]:
    """Redact every log record this process makes — whoever logs it, whichever handler writes it
    (the handlers of a program embedding the platform, a test runner's capture) — until the returned
    function is called. Only records that pass their logger's level are made, so this costs nothing
    on quiet loggers."""
    global _made_by
    if not _RECORD_REDACTIONS and logging.getLogRecordFactory() is not _redacting_factory:
        _made_by = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_factory)
    _RECORD_REDACTIONS.append(redact)

    def stop() -> None:
        global _made_by
        with contextlib.suppress(ValueError):
            _RECORD_REDACTIONS.remove(redact)
        if not _RECORD_REDACTIONS and logging.getLogRecordFactory() is _redacting_factory:
            logging.setLogRecordFactory(_made_by or logging.LogRecord)
            _made_by = None

    return stop


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": component_of(record.name),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in EXECUTION_FIELDS:
            value = getattr(record, field, None)
            if value:
                line[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level component: message [trace_id=… execution_id=… agent=…]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(component)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.component = component_of(record.name)
        text = super().format(record)
        ids = " ".join(f"{field}={getattr(record, field)}" for field in EXECUTION_FIELDS
                       if getattr(record, field, None))
        return f"{text} [{ids}]" if ids else text


def _handler(settings: Any) -> logging.Handler:
    if settings.log_output != "file":
        return logging.StreamHandler(sys.stdout)
    path = settings.log_file_path
    if settings.log_rotation == "size":
        return logging.handlers.RotatingFileHandler(path, maxBytes=settings.log_max_size,
                                                    backupCount=settings.log_backup_count, encoding="utf-8")
    when = "midnight" if settings.log_rotation == "daily" else "W0"
    return logging.handlers.TimedRotatingFileHandler(path, when=when, backupCount=settings.log_backup_count,
                                                     encoding="utf-8", utc=True)


def configure_logging(settings: Any, redact: Callable[[str], str] | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one configured from the settings; returns it."""
    handler = _handler(settings)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(ExecutionFilter())
    if redact is not None:
        handler.addFilter(RedactionFilter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for prefix, (_component, setting) in COMPONENTS.items():
        logging.getLogger(prefix).setLevel(getattr(settings, setting))
    logging.captureWarnings(True)
    return handler


def announce(line: str, settings: Any) -> None:
    """A line for the operator (the serve banner): printed as is, or logged when logs are JSON so that
    every line the process writes is one JSON object."""
    if settings.log_format == "json" or settings.log_output == "file":
        logging.getLogger("agentrunner").info(line)
        if settings.log_format == "json":
            return
    print(line, flush=True)
