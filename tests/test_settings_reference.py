"""Keeps the settings honest against the configuration reference, the code, the README and the docs.

* every variable of ``shared/seed/configuration-reference.md`` has a field in ``Settings``;
* every variable is either read by code (outside settings.py) or listed in ``NO_EFFECT`` and
  in the README's "accepted, no effect" table — never both;
* the README's tables match ``DIFFERS_FROM_REFERENCE`` and ``PRECEDENCE``;
* ``docs/configuration.md`` and ``.env.example`` are what the settings module generates.

The generated files are written by running this file: ``python tests/test_settings_reference.py --write``
(it rewrites ``docs/configuration.md``, ``.env.example`` and the README's settings block).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import attrs
import pytest

from agentrunner.settings import (
    DERIVED,
    DIFFERS_FROM_REFERENCE,
    NO_EFFECT,
    PRECEDENCE,
    URL_PARTS,
    VARIABLES,
    Settings,
    load_settings,
)

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with shared/ beside it; locally /work/shared is the same place.
REFERENCE = REPO.parent / "shared" / "seed" / "configuration-reference.md"
README = REPO / "README.md"
DOCS = REPO / "docs" / "configuration.md"
ENV_EXAMPLE = REPO / ".env.example"
SETTINGS_PY = (REPO / "core" / "agentrunner" / "settings.py").resolve()
README_START, README_END = "<!-- settings:start -->", "<!-- settings:end -->"
WRITE_HINT = "regenerate with: python tests/test_settings_reference.py --write"


# --- What the reference and the code say ------------------------------------------------


def reference_variables() -> list[str]:
    """Every NAME= line of the reference (any section), and the variables its Python examples read."""
    if not REFERENCE.is_file():
        pytest.fail(f"the configuration reference is missing: {REFERENCE} (shared/ must sit beside the repository)")
    text = REFERENCE.read_text(encoding="utf-8")
    names = re.findall(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)
    names += re.findall(r"os\.getenv\(\"([A-Z][A-Z0-9_]*)\"", text)
    return sorted(set(names))


#: String literals that equal a field name by coincidence: not a read of the setting.
LITERAL_COINCIDENCES = {
    "api_key": "an auth type of agent tools (schema.py)",
    "config_dir": "the parameter name of the CLI's --config option",
}


def attributes_read_by_code() -> set[str]:
    """Names of settings read in core/ and plugins/ Python code, except settings.py and tests.

    A read is an attribute (``settings.name``, ``self.settings.name``) or a string literal
    naming it (``getattr(settings, "name")``, ``get("name", default)``).
    """
    names: set[str] = set()
    for top in (REPO / "core", REPO / "plugins"):
        for path in top.rglob("*.py"):
            parts = path.relative_to(REPO).parts
            if path.resolve() == SETTINGS_PY or {"tests", "build"} & set(parts) or path.name.startswith("test_"):
                continue
            text = path.read_text(encoding="utf-8")
            names.update(re.findall(r"\.([a-z_][a-z0-9_]*)\b", text))
            names.update(set(re.findall(r"[\"']([a-z_][a-z0-9_]*)[\"']", text)) - set(LITERAL_COINCIDENCES))
    return names


def used_variables() -> dict[str, str]:
    """Each variable some code uses, with how: its attribute, a derived property, or a winner that uses it."""
    read = attributes_read_by_code()
    used = {}
    for name in VARIABLES:
        if name.lower() in read:
            used[name] = f"settings.{name.lower()}"
        for attribute, inputs in DERIVED.items():
            if name in inputs and attribute in read:
                used.setdefault(name, f"settings.{attribute}")
    # A loser of a precedence pair fills its winner's field, so it counts wherever the winner does.
    for winner, loser, _note in PRECEDENCE:
        if winner in used:
            used.setdefault(loser, f"settings.{winner.lower()} (when {winner} is unset)")
    return used


def readme_block() -> str:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(README_START), text.index(README_END)
    return text[start + len(README_START):end]


def table_after(block: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after the line that contains ``heading``."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if heading in line)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header row


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)


# --- Tests ---------------------------------------------------------------------------------


def test_every_reference_variable_has_a_field():
    fields = attrs.fields_dict(Settings)
    missing = [name for name in reference_variables() if name.lower() not in fields]
    assert not missing, f"variables of the reference without a Settings field: {missing}"
    assert set(reference_variables()) <= set(VARIABLES)


def test_every_variable_is_used_by_code_or_listed_as_having_no_effect():
    used = used_variables()
    silent = [name for name in VARIABLES if name not in used and name not in NO_EFFECT]
    assert not silent, (
        f"these variables are read by no code outside settings.py: add them to NO_EFFECT with the reason, "
        f"then {WRITE_HINT}: {silent}"
    )
    untrue = {name: used[name] for name in NO_EFFECT if name in used}
    assert not untrue, (
        f"these NO_EFFECT variables are read by code: remove them from NO_EFFECT, then {WRITE_HINT}: {untrue}"
    )
    assert set(NO_EFFECT) <= set(VARIABLES)


def test_readme_no_effect_table_matches_no_effect():
    rows = table_after(readme_block(), "Accepted, no effect")
    listed = {name: reason for names, reason in rows for name in backticked(names)}
    assert listed == NO_EFFECT, WRITE_HINT


def test_readme_lists_every_default_that_differs_from_the_reference():
    rows = table_after(readme_block(), "differ from the reference")
    listed = {name for row in rows for name in backticked(row[0])}
    assert set(DIFFERS_FROM_REFERENCE) <= listed, WRITE_HINT
    # and the record is complete: a field with a reference value is exactly a difference
    assert set(DIFFERS_FROM_REFERENCE) == {name for name, var in VARIABLES.items() if var.reference is not None}


def test_readme_lists_every_precedence_pair():
    rows = table_after(readme_block(), "the more specific one wins")
    listed = {(winner, loser) for row in rows for winner in backticked(row[0]) for loser in backticked(row[1])}
    pairs = {(winner, loser) for winner, loser, _note in PRECEDENCE}
    pairs |= {(url, part) for url, parts in URL_PARTS.items() for part in parts}
    assert pairs <= listed, WRITE_HINT


def test_docs_list_every_variable_with_its_type_and_default():
    assert DOCS.read_text(encoding="utf-8") == render_docs(), WRITE_HINT
    text = DOCS.read_text(encoding="utf-8")
    for name in VARIABLES:
        assert f"| `{name}` |" in text


def test_env_example_is_generated_and_lists_every_reference_variable():
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert text == render_env_example(), WRITE_HINT
    for name in reference_variables():
        assert re.search(rf"^(# )?{name}=", text, flags=re.MULTILINE), name


def test_copying_env_example_keeps_the_embedded_defaults(tmp_path):
    settings = load_settings(environ={}, env_file=ENV_EXAMPLE)
    backends = (settings.state_backend, settings.cache_backend, settings.event_bus_backend)
    assert backends == ("sqlite", "memory", "memory")
    defaults = Settings()
    for variable in VARIABLES.values():
        assert getattr(settings, variable.field) == getattr(defaults, variable.field), variable.name
    assert settings.production_problems() == []
    assert settings.no_effect_set() == []  # values equal to the defaults change nothing: validate stays quiet


# --- Generating the README block, docs/configuration.md and .env.example -------------------


def _code(value: str) -> str:
    return f"`{value}`" if value else "unset"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(variable) -> str:
    if variable.name == "CONFIG_AGENTS_DIR":
        return "`CONFIG_DIR/agents`"
    if variable.name.endswith("_LOG_LEVEL"):
        return "`LOG_LEVEL`"
    return _cell(_code(variable.render(variable.default)))


def render_readme_block() -> str:
    differs = "\n".join(
        f"| `{name}` | {_default(VARIABLES[name])} | {_cell(_code(VARIABLES[name].reference or ''))} | {why} |"
        for name, why in DIFFERS_FROM_REFERENCE.items()
    )
    precedence = "\n".join(f"| `{winner}` | `{loser}` | {note} |" for winner, loser, note in PRECEDENCE)
    precedence += "\n" + "\n".join(
        f"| `{url}` | {', '.join(f'`{part}`' for part in parts)} | the URL is used as it is; the parts are ignored |"
        for url, parts in URL_PARTS.items()
    )
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, reason in NO_EFFECT.items():
        by_reason[reason].append(name)
    no_effect = "\n".join(
        f"| {', '.join(f'`{name}`' for name in names)} | {reason} |" for reason, names in by_reason.items()
    )
    return f"""
Settings are environment variables: every one of the configuration reference
(`shared/seed/configuration-reference.md`), plus a few of agentrunner's own.
[docs/configuration.md](docs/configuration.md) lists them all with type and default.

- `.env` in the working directory is read (copy [`.env.example`](.env.example), which lists every
  variable with its default; `config/env/` holds the reference's development, staging and production
  examples). The real environment wins over `.env`. Values in `.env` may use `${{VAR}}`.
- `NAME_FILE=/path` reads `NAME` from a file (Docker or Kubernetes secrets); one trailing newline is
  dropped. Setting both `NAME` and `NAME_FILE` is an error. An empty value counts as unset.
- Booleans are `true/false`, `1/0`, `yes/no` or `on/off`; lists are JSON (`["a","b"]`) or `a,b`; sizes
  are bytes or `512K`, `100M`, `2GB`; `WARN` means `WARNING`.
- A bad value stops start-up, with every problem listed and named, e.g.
  `ORCHESTRATOR_PORT: expected an integer between 1 and 65535 (got 'abc')`. Secrets (keys, passwords,
  tokens, URLs with credentials) never appear in messages or logs.
- `ENVIRONMENT=production` refuses to start without `API_AUTH_ENABLED=true` and an `API_KEY` of at
  least 32 characters, and refuses the reference's placeholders (`your-secure-api-key…`, `sk-...`,
  RabbitMQ's `guest`/`guest`, `secure_password`).

**Backends** are chosen from the environment: `DATABASE_URL` or `POSTGRES_HOST` set → PostgreSQL, else
the embedded SQLite file `SQLITE_PATH` (`agentrunner.db`); `REDIS_HOST` set → Redis, else in memory;
`RABBITMQ_URL` or `RABBITMQ_HOST` set → RabbitMQ, else in memory. `STATE_BACKEND`, `CACHE_BACKEND` and
`EVENT_BUS_BACKEND` override the choice.

Defaults that differ from the reference's examples, which describe a production deployment; these are
safe for a first run on a laptop, where every service listens on `BIND_HOST` = `127.0.0.1` only:

| variable | default here | reference | why |
|---|---|---|---|
{differs}

Where the reference names one setting twice, the more specific one wins; the other counts only when
the first is unset:

| wins | over | setting |
|---|---|---|
{precedence}

Schedules fire in-process, not on Celery. The Celery settings with a meaning here: `CELERY_TIMEZONE` and
`CELERY_WORKER_CONCURRENCY` (above); `CELERY_TASK_SOFT_TIME_LIMIT`: an execution still running then is
cancelled and `timed_out`, even if its own timeout (or `TASK_DEFAULT_TIMEOUT`) is longer;
`CELERY_TASK_TIME_LIMIT`: an execution that ignores its cancellation is abandoned
`CELERY_TASK_TIME_LIMIT` − `CELERY_TASK_SOFT_TIME_LIMIT` seconds later, and never runs past
`CELERY_TASK_TIME_LIMIT`. Agentrunner's additions: `BIND_HOST`, `SQLITE_PATH`,
`STATE_BACKEND`, `CACHE_BACKEND`, `EVENT_BUS_BACKEND`, `OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`,
`SLACK_API_URL`, `DB_AUTO_MIGRATE`, `REDIS_KEY_PREFIX`, `RABBITMQ_EXCHANGE`, `SHUTDOWN_GRACE_PERIOD`,
`AGENT_MAX_TOOL_STEPS`, `AGENT_TOOL_REPEAT_LIMIT`, `TOOL_MAX_RESPONSE_BYTES`, `SCHEDULER_MISFIRE_GRACE`,
`EXECUTION_MAX_TOKENS`, `EXECUTION_MAX_TOOL_CALLS`, `WORKER_WEIGHT`,
`AGENTRUNNER_DISABLED_PLUGINS`.

Accepted, no effect: these variables are validated but nothing reads them (yet);
`agentrunner validate` names the ones you set.

| variables | why |
|---|---|
{no_effect}
"""


def render_docs() -> str:
    sections: dict[str, list] = defaultdict(list)
    for variable in VARIABLES.values():
        sections[variable.section].append(variable)
    losers = defaultdict(list)
    for winner, loser, _note in PRECEDENCE:
        losers[winner].append(loser)
    url_of = {part: url for url, parts in URL_PARTS.items() for part in parts}
    out = [
        "# Configuration",
        "",
        "<!-- Generated from core/agentrunner/settings.py by `python tests/test_settings_reference.py --write`;",
        "     edit the settings module, not this file. -->",
        "",
        "Every environment variable agentrunner reads, by section, with its type and default. How values",
        "are read (`.env`, the environment, `NAME_FILE`), the defaults that differ from the configuration",
        "reference, which of two names wins and which variables have no effect yet are in the",
        "[README](../README.md#configuration). Code reads each one as `settings.<name in lower case>`.",
        "",
        "Types: *boolean* is `true/false`, `1/0`, `yes/no` or `on/off`; *list* is JSON (`[\"a\",\"b\"]`) or",
        "`a,b`; *size* is bytes or `512K`, `100M`, `2GB` (powers of 1024); a *secret* is never shown in",
        "messages or logs; log levels accept `WARN` for `WARNING`. An empty value means unset.",
    ]
    for section, variables in sections.items():
        out += ["", f"## {section}", "", "| variable | type | default | description |", "|---|---|---|---|"]
        for variable in variables:
            notes = [variable.help[0].upper() + variable.help[1:] + "."]
            if variable.name in DIFFERS_FROM_REFERENCE:
                notes.append(f"Reference: {_code(variable.reference or '')}.")
            # (the help of a loser and of the log levels already says which name wins)
            already_said = variable.name.endswith("_LOG_LEVEL") or variable.name == "CONFIG_AGENTS_DIR"
            if variable.name in losers and not already_said:
                notes.append(f"Unset, {' or '.join(f'`{name}`' for name in losers[variable.name])} is used.")
            if variable.name in url_of:
                notes.append(f"Ignored when `{url_of[variable.name]}` is set.")
            out.append(f"| `{variable.name}` | {_cell(variable.type_name)} | {_default(variable)} | "
                       f"{_cell(' '.join(notes))} |")
    return "\n".join(out) + "\n"


#: Backend addresses stay commented out in .env.example: copying it must keep the embedded backends.
EXAMPLE_HOSTS = {
    "DATABASE_URL": "postgresql://agentrunner:change-me@localhost:5432/agentrunner",
    "POSTGRES_HOST": "localhost",
    "REDIS_HOST": "localhost",
    "RABBITMQ_HOST": "localhost",
    "RABBITMQ_URL": "amqp://agentrunner:change-me@localhost:5672/%2F",
}


def render_env_example() -> str:
    out = [
        "# agentrunner settings: copy this file to .env and change what you need.",
        "# Every variable of the configuration reference, with agentrunner's default; the real",
        "# environment wins over .env. An empty value means unset. NAME_FILE=/path reads NAME from a",
        "# file (Docker or Kubernetes secrets). Types and details: docs/configuration.md.",
        "# The backend addresses are commented out, so the embedded backends (SQLite, in-memory",
        "# cache and event bus) are used until you set one. Where the reference has two names for",
        "# one setting, the specific one is left empty so that either works.",
        "# Generated by `python tests/test_settings_reference.py --write`.",
    ]
    losers = defaultdict(list)
    for winner, loser, _note in PRECEDENCE:
        losers[winner].append(loser)
    section = None
    for variable in VARIABLES.values():
        if variable.section != section:
            section = variable.section
            out += ["", f"# ---- {section} ----"]
        comment = variable.help[0].upper() + variable.help[1:]
        if variable.name in EXAMPLE_HOSTS:
            out += [f"# {comment}", f"# {variable.name}={EXAMPLE_HOSTS[variable.name]}"]
        elif variable.name in losers:
            # Left empty, so that the other name still works when it is the one you set.
            if "(unset:" not in comment:
                comment += f" (unset: {' or '.join(losers[variable.name])}, else {variable.render(variable.default)})"
            out += [f"# {comment}", f"{variable.name}="]
        else:
            out += [f"# {comment}", f"{variable.name}={variable.render(variable.default)}"]
    return "\n".join(out) + "\n"


def write_generated_files() -> None:
    """Rewrite docs/configuration.md, .env.example and the README's settings block."""
    DOCS.write_text(render_docs(), encoding="utf-8")
    ENV_EXAMPLE.write_text(render_env_example(), encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    README.write_text(text[:start] + render_readme_block() + text[end:], encoding="utf-8")


def test_readme_block_is_generated():
    assert readme_block() == render_readme_block(), WRITE_HINT


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_settings_reference.py --write")
    write_generated_files()
