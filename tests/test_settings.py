"""The settings layer: sources, types, errors, precedence, backends, production checks, secrets.

Every test passes an explicit ``environ`` (and ``env_file``), so the machine's environment
never matters.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from agentrunner import settings as settings_module
from agentrunner.settings import (
    DIFFERS_FROM_REFERENCE,
    NO_EFFECT,
    PRECEDENCE,
    URL_PARTS,
    VARIABLES,
    Secret,
    Settings,
    SettingsError,
    load_settings,
    read_environment,
)

REPO = Path(__file__).resolve().parents[1]
CANARY = "CANARY-0123456789-abcdefghijklmnopqrstuvwxyz"  # long enough to pass as an API key
GOOD_KEY = "k" * 32


def load(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    return load_settings(environ=environ or {}, env_file=env_file)


def problems_of(environ: dict[str, str], env_file: Path | None = None) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load(environ, env_file)
    return caught.value.problems


# --- Defaults ------------------------------------------------------------------------------


def test_defaults_are_safe_for_a_first_run_on_a_laptop():
    settings = load()
    assert settings.environment == "development"
    assert settings.api_auth_enabled is False
    assert settings.tls_enabled is False
    assert settings.rate_limit_enabled is False
    assert settings.cors_enabled is False
    assert settings.log_format == "text"
    assert settings.log_output == "stdout"
    assert settings.bind_host == "127.0.0.1"
    assert settings.default_llm_provider == settings.default_llm_model == "echo"
    assert settings.postgres_host is settings.redis_host is settings.rabbitmq_host is None
    assert settings.rabbitmq_url is settings.database_url is None
    assert settings.api_key is settings.openai_api_key is settings.postgres_password is None
    backends = (settings.state_backend, settings.cache_backend, settings.event_bus_backend)
    assert backends == ("sqlite", "memory", "memory")
    assert settings.sqlite_path == "agentrunner.db"
    assert settings.production_problems() == []
    assert settings.no_effect_set() == []


def test_defaults_of_the_reference_are_kept_and_typed():
    settings = load()
    assert settings.orchestrator_port == 8003
    assert settings.postgres_statement_timeout == 30000
    assert settings.postgres_pool_timeout == 30.0
    assert settings.log_max_size == 100 * 1024 * 1024
    assert settings.log_level == "INFO"
    assert settings.cors_methods == ("GET", "POST", "PUT", "DELETE")
    assert settings.celery_accept_content == ("json",)
    assert settings.scheduler_timezone == "UTC"
    assert settings.config_agents_dir == "config/agents"


def test_loading_nothing_gives_the_declared_defaults():
    assert load() == Settings()


def test_every_variable_has_the_field_named_after_it():
    fields = attrs.fields_dict(Settings)
    for name, variable in VARIABLES.items():
        assert variable.field in fields
        assert variable.field.lstrip("_") == name.lower()
        assert hasattr(Settings(), name.lower())  # the backend choices are properties over _fields


def test_each_difference_from_the_reference_is_a_real_difference():
    for name in DIFFERS_FROM_REFERENCE:
        variable = VARIABLES[name]
        assert variable.render(variable.default) != variable.reference, name


def test_settings_are_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        load().orchestrator_port = 1  # type: ignore[misc]


# --- Sources -------------------------------------------------------------------------------


def test_dotenv_is_read(tmp_path):
    env = tmp_path / ".env"
    env.write_text("ORCHESTRATOR_PORT=9003\nLOG_FORMAT=json\n# a comment\n")
    settings = load(env_file=env)
    assert settings.orchestrator_port == 9003 and settings.log_format == "json"
    assert settings.set_variables == {"ORCHESTRATOR_PORT", "LOG_FORMAT"}


def test_dotenv_in_the_working_directory_is_the_default(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("ORCHESTRATOR_PORT=9003\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).orchestrator_port == 9003


def test_the_real_environment_is_the_default_environ(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module.os, "environ", {"ORCHESTRATOR_PORT": "9100"})
    monkeypatch.chdir(tmp_path)
    assert load_settings().orchestrator_port == 9100


def test_a_missing_dotenv_is_no_error(tmp_path):
    assert load(env_file=tmp_path / "nowhere.env") == Settings()


def test_the_environment_wins_over_dotenv(tmp_path):
    env = tmp_path / ".env"
    env.write_text("ORCHESTRATOR_PORT=9003\nSTATE_MANAGER_PORT=9001\n")
    settings = load({"ORCHESTRATOR_PORT": "7003"}, env)
    assert settings.orchestrator_port == 7003
    assert settings.state_manager_port == 9001


def test_dotenv_values_expand_variables(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "PG=db.internal\n"
        "POSTGRES_HOST=${PG}\n"
        "REDIS_HOST=${FROM_ENV}\n"
        "RABBITMQ_HOST=${MISSING:-mq.internal}\n"
        "LOG_FILE_PATH=${LOGS}/agentrunner.log\n"
    )
    settings = load({"FROM_ENV": "cache.internal", "LOGS": "/srv/logs"}, env)
    assert settings.postgres_host == "db.internal"
    assert settings.redis_host == "cache.internal"
    assert settings.rabbitmq_host == "mq.internal"
    assert settings.log_file_path == "/srv/logs/agentrunner.log"


def test_expansion_sees_the_environment_winning_over_earlier_dotenv_lines(tmp_path):
    env = tmp_path / ".env"
    env.write_text("PG=from-file\nPOSTGRES_HOST=${PG}\n")
    assert load({"PG": "from-env"}, env).postgres_host == "from-env"


def test_settings_keep_the_merged_environment_for_agent_files(tmp_path):
    env = tmp_path / ".env"
    env.write_text("TOOL_API_TOKEN=from-file\nOTHER=x\n")
    settings = load({"OTHER": "y"}, env)
    assert settings.environ["TOOL_API_TOKEN"] == "from-file" and settings.environ["OTHER"] == "y"
    assert "TOOL_API_TOKEN" not in repr(settings)
    assert read_environment({"A": "1"}, None) == {"A": "1"}


def test_a_dotenv_line_that_cannot_be_parsed_is_an_error_without_its_content(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"ORCHESTRATOR_PORT=9003\nAPI_KEY=\"{CANARY}\nLOG_LEVEL=LOUD\n")
    problems = problems_of({}, env)
    assert problems[0] == f"{env}: line 2 cannot be parsed (expected NAME=value)"
    assert CANARY not in " ".join(problems)
    with pytest.raises(SettingsError):
        read_environment({}, env)


def test_an_empty_value_counts_as_unset(tmp_path):
    env = tmp_path / ".env"
    env.write_text("ORCHESTRATOR_PORT=\nOPENAI_API_KEY=\n")
    settings = load({"LOG_LEVEL": ""}, env)
    assert settings == Settings()
    assert settings.set_variables == set()


# --- NAME_FILE -----------------------------------------------------------------------------


def test_name_file_reads_the_value_from_a_file(tmp_path):
    secret = tmp_path / "api_key"
    secret.write_text(CANARY + "\n")
    settings = load({"API_KEY_FILE": str(secret)})
    assert settings.api_key.get_secret_value() == CANARY  # one trailing newline stripped
    assert "API_KEY" in settings.set_variables


def test_name_file_strips_only_one_trailing_newline(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("pass word \n\n")
    assert load({"POSTGRES_PASSWORD_FILE": str(secret)}).postgres_password.get_secret_value() == "pass word \n"


def test_name_file_works_for_any_variable_and_from_dotenv(tmp_path):
    (tmp_path / "port").write_text("9003\n")
    env = tmp_path / ".env"
    env.write_text(f"ORCHESTRATOR_PORT_FILE={tmp_path / 'port'}\n")
    assert load(env_file=env).orchestrator_port == 9003


def test_name_file_missing_is_an_error_naming_it(tmp_path):
    problems = problems_of({"OPENAI_API_KEY_FILE": str(tmp_path / "nope")})
    assert len(problems) == 1
    assert problems[0].startswith("OPENAI_API_KEY_FILE: cannot read")
    assert "nope" in problems[0]


def test_name_file_empty_is_an_error(tmp_path):
    (tmp_path / "empty").write_text("")
    assert problems_of({"API_KEY_FILE": str(tmp_path / "empty")})[0].startswith("API_KEY_FILE:")


def test_name_and_name_file_both_set_is_an_error(tmp_path):
    (tmp_path / "key").write_text(CANARY)
    problems = problems_of({"API_KEY": CANARY, "API_KEY_FILE": str(tmp_path / "key")})
    assert problems == ["API_KEY and API_KEY_FILE are both set: set only one"]


def test_a_bad_value_read_from_a_file_is_named(tmp_path):
    (tmp_path / "port").write_text("abc\n")
    assert problems_of({"ORCHESTRATOR_PORT_FILE": str(tmp_path / "port")}) == [
        "ORCHESTRATOR_PORT: expected an integer between 1 and 65535 (got 'abc')"
    ]


# --- Types and bad values ------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("OFF", False),
])
def test_booleans(text, expected):
    assert load({"API_AUTH_ENABLED": text}).api_auth_enabled is expected


@pytest.mark.parametrize("text", ["ture", "2", "enabled", "y"])
def test_a_bad_boolean_is_an_error(text):
    assert problems_of({"TLS_ENABLED": text}) == [
        f"TLS_ENABLED: expected a boolean (true/false, 1/0, yes/no, on/off) (got {text!r})"
    ]


@pytest.mark.parametrize("text, expected", [
    ('["https://a.example","https://b.example"]', ("https://a.example", "https://b.example")),
    ("https://a.example, https://b.example", ("https://a.example", "https://b.example")),
    ("https://a.example", ("https://a.example",)),
    ("[]", ()),
])
def test_lists_are_json_or_comma_separated(text, expected):
    assert load({"CORS_ORIGINS": text}).cors_origins == expected


def test_disabled_plugins_is_a_list_of_names():
    plugins = load({"AGENTRUNNER_DISABLED_PLUGINS": "echo, api-tool"}).agentrunner_disabled_plugins
    assert plugins == ("echo", "api-tool")
    assert load({"AGENTRUNNER_DISABLED_PLUGINS": '["echo"]'}).agentrunner_disabled_plugins == ("echo",)


@pytest.mark.parametrize("text", ['["a",', '[1, 2]', '["a", null]'])
def test_a_bad_json_list_is_an_error(text):
    problem, = problems_of({"CORS_METHODS": text})
    assert problem.startswith("CORS_METHODS: expected a JSON list of strings")


@pytest.mark.parametrize("text, expected", [("WARN", "WARNING"), ("warn", "WARNING"), ("debug", "DEBUG"),
                                            ("ERROR", "ERROR"), ("Critical", "CRITICAL")])
def test_log_levels_accept_warn_and_any_case(text, expected):
    settings = load({"LOG_LEVEL": text, "ORCHESTRATOR_LOG_LEVEL": text})
    assert settings.log_level == settings.orchestrator_log_level == expected


@pytest.mark.parametrize("text, expected", [
    ("100M", 100 * 1024**2), ("2gb", 2 * 1024**3), ("512K", 512 * 1024), ("1048576", 1048576),
    ("1.5G", int(1.5 * 1024**3)), ("10MiB", 10 * 1024**2),
])
def test_sizes_are_parsed_to_bytes(text, expected):
    assert load({"LOG_MAX_SIZE": text}).log_max_size == expected
    assert load({"REDIS_MAXMEMORY": text}).redis_maxmemory == expected


def test_enums_are_normalised():
    settings = load({"LOG_FORMAT": "JSON", "ENVIRONMENT": "Staging", "TASK_ROUTING_STRATEGY": "least_busy",
                     "TLS_MIN_VERSION": "tlsv1.3"})
    assert (settings.log_format, settings.environment, settings.task_routing_strategy, settings.tls_min_version) == (
        "json", "staging", "least_busy", "TLSv1.3")


@pytest.mark.parametrize("name, text, expected", [
    ("ORCHESTRATOR_PORT", "abc", "expected an integer between 1 and 65535 (got 'abc')"),
    ("ORCHESTRATOR_PORT", "0", "expected an integer between 1 and 65535 (got '0')"),
    ("METRICS_PORT", "70000", "expected an integer between 1 and 65535 (got '70000')"),
    ("POSTGRES_MAX_POOL_SIZE", "2.5", "expected an integer >= 1 (got '2.5')"),
    ("TASK_MAX_RETRIES", "-1", "expected an integer >= 0 (got '-1')"),
    ("REDIS_DB", "16", "expected an integer between 0 and 15 (got '16')"),
    ("REQUEST_TIMEOUT", "0", "expected a number > 0 (got '0')"),
    ("REQUEST_TIMEOUT", "soon", "expected a number > 0 (got 'soon')"),
    ("REQUEST_TIMEOUT", "nan", "expected a number > 0 (got 'nan')"),
    ("LOG_FORMAT", "xml", "expected one of json, text (got 'xml')"),
    ("LOG_OUTPUT", "stderr", "expected one of stdout, file (got 'stderr')"),
    ("LOG_ROTATION", "hourly", "expected one of daily, weekly, size (got 'hourly')"),
    ("LOG_LEVEL", "VERBOSE", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'VERBOSE')"),
    ("ENVIRONMENT", "prod", "expected one of development, staging, production (got 'prod')"),
    ("TASK_ROUTING_STRATEGY", "random", "expected one of round_robin, least_busy, weighted (got 'random')"),
    ("SCHEDULER_TIMEZONE", "Mars/Olympus", "expected an IANA time zone such as UTC or Europe/Paris "
                                           "(got 'Mars/Olympus')"),
    ("OLLAMA_BASE_URL", "localhost:11434", "expected a URL starting with http:// or https:// (got 'localhost:11434')"),
    ("SLACK_WEBHOOK_PATH", "slack/events", "expected a path starting with / (got 'slack/events')"),
    ("STATE_BACKEND", "Postgres!", "expected a lower-case name (letters, digits, _ . -) (got 'Postgres!')"),
    ("API_KEY_HEADER", "X API Key", "expected an HTTP header name (got 'X API Key')"),
])
def test_a_bad_value_names_the_variable_and_what_it_expects(name, text, expected):
    assert problems_of({name: text}) == [f"{name}: {expected}"]


def test_a_bad_size_names_the_variable():
    problem, = problems_of({"LOG_MAX_SIZE": "big"})
    assert problem.startswith("LOG_MAX_SIZE: expected a size in bytes such as") and problem.endswith("(got 'big')")


def test_a_long_bad_value_is_shown_cut_short():
    problem, = problems_of({"ORCHESTRATOR_PORT": "x" * 500})
    assert len(problem) < 200 and problem.endswith("...')")


def test_every_problem_is_reported_at_once(tmp_path):
    env = tmp_path / ".env"
    env.write_text("STATE_MANAGER_PORT=nope\n")
    problems = problems_of({"ORCHESTRATOR_PORT": "abc", "TLS_ENABLED": "perhaps", "LOG_LEVEL": "LOUD",
                            "CORS_ORIGINS": "[", "OPENAI_API_KEY_FILE": str(tmp_path / "nope")}, env)
    assert [problem.split(":")[0] for problem in problems] == [
        "STATE_MANAGER_PORT", "ORCHESTRATOR_PORT", "OPENAI_API_KEY_FILE", "LOG_LEVEL", "TLS_ENABLED", "CORS_ORIGINS"]
    with pytest.raises(SettingsError) as caught:
        load({"ORCHESTRATOR_PORT": "abc", "TLS_ENABLED": "perhaps"})
    assert "ORCHESTRATOR_PORT" in str(caught.value) and "TLS_ENABLED" in str(caught.value)


def test_rules_between_variables():
    assert problems_of({"POSTGRES_MIN_POOL_SIZE": "30", "DB_POOL_SIZE": "10"}) == [
        "POSTGRES_MIN_POOL_SIZE: must not exceed POSTGRES_MAX_POOL_SIZE (30 > 10)"]
    assert problems_of({"CELERY_TASK_SOFT_TIME_LIMIT": "700"}) == [
        "CELERY_TASK_SOFT_TIME_LIMIT: must not exceed CELERY_TASK_TIME_LIMIT (700 > 600)"]


# --- Precedence ----------------------------------------------------------------------------

#: A valid value for each variable of a precedence pair, different from every default.
SAMPLES = {
    "POSTGRES_MAX_POOL_SIZE": ("31", 31), "DB_POOL_SIZE": ("42", 42),
    "POSTGRES_POOL_MAX_OVERFLOW": ("3", 3), "DB_POOL_OVERFLOW": ("4", 4),
    "POSTGRES_STATEMENT_TIMEOUT": ("1500", 1500), "DB_QUERY_TIMEOUT": ("2.5", 2500),
    "REDIS_MAX_CONNECTIONS": ("70", 70), "REDIS_POOL_SIZE": ("80", 80),
    "REDIS_STATE_TTL": ("61", 61), "STATE_CACHE_TTL": ("62", 62),
    "REDIS_CONFIG_TTL": ("63", 63), "CONFIG_CACHE_TTL": ("64", 64),
    "SCHEDULER_TIMEZONE": ("Europe/Paris", "Europe/Paris"), "CELERY_TIMEZONE": ("Asia/Tokyo", "Asia/Tokyo"),
    "WORKER_THREADS_PER_PROCESS": ("5", 5), "CELERY_WORKER_CONCURRENCY": ("6", 6),
    "WORKER_MAX_REQUESTS": ("500", 500), "CELERY_WORKER_MAX_TASKS_PER_CHILD": ("50", 50),
    "CONFIG_AGENTS_DIR": ("/srv/agents", "/srv/agents"), "CONFIG_DIR": ("/srv/conf", str(Path("/srv/conf/agents"))),
    "LOG_LEVEL": ("DEBUG", "DEBUG"),
    **{f"{c}_LOG_LEVEL": ("ERROR", "ERROR") for c in ("STATE_MANAGER", "CONFIG_SERVICE", "ORCHESTRATOR", "SCHEDULER",
                                                      "SLACK_GATEWAY")},
}


@pytest.mark.parametrize("winner, loser", [(winner, loser) for winner, loser, _note in PRECEDENCE])
def test_the_generic_name_counts_only_when_the_specific_one_is_unset(winner, loser):
    field = VARIABLES[winner].field
    loser_text, as_winner = SAMPLES[loser]
    winner_text, winner_value = SAMPLES[winner]
    alone = load({loser: loser_text})
    assert getattr(alone, field) == as_winner
    both = load({loser: loser_text, winner: winner_text})
    assert getattr(both, field) == winner_value
    assert f"{loser} has no effect: {winner} is set too and wins" in both.no_effect_set() or loser in NO_EFFECT \
        or winner.endswith("_LOG_LEVEL")  # LOG_LEVEL still sets the other components


def test_a_generic_name_left_at_a_default_unlike_the_specific_ones_changes_nothing():
    # the reference's .env carries CELERY_WORKER_MAX_TASKS_PER_CHILD=100 (its default): WORKER_MAX_REQUESTS
    # keeps its own default of 1000 then; any other value of the Celery name counts
    assert load({"CELERY_WORKER_MAX_TASKS_PER_CHILD": "100"}).worker_max_requests == 1000
    assert load({"CELERY_WORKER_MAX_TASKS_PER_CHILD": "0"}).worker_max_requests == 0


def test_the_loser_keeps_its_own_value_in_its_field():
    settings = load({"DB_POOL_SIZE": "42", "POSTGRES_MAX_POOL_SIZE": "31"})
    assert (settings.db_pool_size, settings.postgres_max_pool_size) == (42, 31)


def test_log_level_sets_every_component_that_sets_none():
    settings = load({"LOG_LEVEL": "WARN", "SCHEDULER_LOG_LEVEL": "DEBUG"})
    assert settings.log_level == settings.orchestrator_log_level == settings.slack_gateway_log_level == "WARNING"
    assert settings.scheduler_log_level == "DEBUG"


def test_precedence_pairs_name_real_variables():
    for winner, loser, note in PRECEDENCE:
        assert winner in VARIABLES and loser in VARIABLES and note
    for url, parts in URL_PARTS.items():
        assert url in VARIABLES and set(parts) <= set(VARIABLES)


def test_database_url_wins_over_the_postgres_parts():
    settings = load({"DATABASE_URL": "postgresql://u:p@db:5432/x", "POSTGRES_HOST": "other", "POSTGRES_PORT": "6543"})
    assert settings.postgres_dsn.get_secret_value() == "postgresql://u:p@db:5432/x"
    assert "POSTGRES_PORT has no effect: DATABASE_URL is set too and wins" in settings.no_effect_set() or \
        "POSTGRES_PORT" in NO_EFFECT


def test_the_postgres_dsn_is_built_from_its_parts():
    settings = load({"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "p@ss/word", "POSTGRES_SSL_MODE": "require"})
    assert settings.postgres_dsn.get_secret_value() == (
        "postgresql://agentrunner:p%40ss%2Fword@db:5432/agentrunner?sslmode=require")
    assert load().postgres_dsn is None


def test_rabbitmq_url_wins_over_its_parts_and_the_parts_build_one():
    url = "amqps://u:p@mq:5671/prod"
    assert load({"RABBITMQ_URL": url, "RABBITMQ_HOST": "x"}).amqp_url.get_secret_value() == url
    built = load({"RABBITMQ_HOST": "mq", "RABBITMQ_SSL": "true"}).amqp_url.get_secret_value()
    assert built == "amqps://guest:guest@mq:5672/%2F?heartbeat=60"
    assert load().amqp_url is None


# --- Backend selection ---------------------------------------------------------------------


@pytest.mark.parametrize("environ, backends", [
    ({}, ("sqlite", "memory", "memory")),
    ({"POSTGRES_HOST": "db"}, ("postgres", "memory", "memory")),
    ({"DATABASE_URL": "postgres://u@db/x"}, ("postgres", "memory", "memory")),
    ({"REDIS_HOST": "cache"}, ("sqlite", "redis", "memory")),
    ({"RABBITMQ_HOST": "mq"}, ("sqlite", "memory", "rabbitmq")),
    ({"RABBITMQ_URL": "amqp://u:p@mq//"}, ("sqlite", "memory", "rabbitmq")),
    ({"POSTGRES_HOST": "db", "STATE_BACKEND": "sqlite"}, ("sqlite", "memory", "memory")),
    ({"REDIS_HOST": "cache", "CACHE_BACKEND": "memory"}, ("sqlite", "memory", "memory")),
    ({"RABBITMQ_HOST": "mq", "EVENT_BUS_BACKEND": "memory"}, ("sqlite", "memory", "memory")),
    ({"STATE_BACKEND": "postgres", "CACHE_BACKEND": "redis", "EVENT_BUS_BACKEND": "kafka"},
     ("postgres", "redis", "kafka")),
])
def test_backends_are_chosen_from_the_environment(environ, backends):
    settings = load(environ)
    assert (settings.state_backend, settings.cache_backend, settings.event_bus_backend) == backends


def test_backend_choice_follows_evolve():
    settings = attrs.evolve(load(), postgres_host="db")
    assert settings.state_backend == "postgres"
    assert attrs.evolve(settings, state_backend="sqlite").state_backend == "sqlite"


# --- Production ----------------------------------------------------------------------------

PRODUCTION = {"ENVIRONMENT": "production", "API_AUTH_ENABLED": "true", "API_KEY": GOOD_KEY}


def test_production_with_auth_and_a_long_key_passes():
    assert load(PRODUCTION).production_problems() == []


def test_production_refuses_no_authentication():
    problems = load({"ENVIRONMENT": "production"}).production_problems()
    assert any(problem.startswith("API_AUTH_ENABLED") for problem in problems)
    assert any(problem.startswith("API_KEY must be set") for problem in problems)


def test_production_refuses_a_short_key_without_showing_it():
    problems = load({**PRODUCTION, "API_KEY": "short-CANARY"}).production_problems()
    assert len(problems) == 1 and problems[0].startswith("API_KEY must be set to at least 32 characters")
    assert "short-CANARY" not in problems[0]


def test_production_refuses_the_reference_placeholders():
    environ = {**PRODUCTION, "API_KEY": "your-secure-api-key-min-32-chars", "POSTGRES_PASSWORD": "secure_password",
               "RABBITMQ_HOST": "mq", "OPENAI_API_KEY": "sk-...", "SLACK_BOT_TOKEN": "xoxb-..."}
    problems = load(environ).production_problems()
    assert [problem.split(" ")[0] for problem in problems] == [
        "API_KEY", "OPENAI_API_KEY", "SLACK_BOT_TOKEN", "POSTGRES_PASSWORD", "RABBITMQ_USER/RABBITMQ_PASSWORD"]


def test_production_refuses_guest_credentials_inside_the_urls():
    environ = {**PRODUCTION, "RABBITMQ_URL": "amqp://guest:guest@mq:5672//",
               "DATABASE_URL": "postgresql://agentrunner:secure_password@db/agentrunner"}
    problems = load(environ).production_problems()
    assert any(problem.startswith("RABBITMQ_URL uses RabbitMQ's default guest/guest") for problem in problems)
    assert any(problem.startswith("DATABASE_URL holds the reference's placeholder") for problem in problems)


def test_production_accepts_real_rabbitmq_credentials():
    assert load({**PRODUCTION, "RABBITMQ_HOST": "mq", "RABBITMQ_USER": "app", "RABBITMQ_PASSWORD": CANARY}
                ).production_problems() == []
    # guest/guest by default is fine while RabbitMQ is not used
    assert load(PRODUCTION).event_bus_backend == "memory"


def test_production_refuses_unsigned_slack_requests():
    problems = load({**PRODUCTION, "SLACK_BOT_TOKEN": CANARY, "SLACK_VERIFY_SIGNATURE": "false"}).production_problems()
    assert problems == ["SLACK_VERIFY_SIGNATURE must be true when ENVIRONMENT=production"]


def test_other_environments_are_not_checked():
    assert load({"ENVIRONMENT": "staging", "API_KEY": "your-secure-api-key"}).production_problems() == []


# --- Secrets -------------------------------------------------------------------------------

SECRET_VARIABLES = [name for name, variable in VARIABLES.items() if variable.secret]


def test_the_secrets_are_the_expected_variables():
    assert set(SECRET_VARIABLES) == {
        "API_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "RABBITMQ_PASSWORD", "RABBITMQ_URL", "DATABASE_URL",
        "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}


def test_secrets_never_show_in_repr_or_str():
    environ = {name: CANARY for name in SECRET_VARIABLES}
    environ["DATABASE_URL"] = f"postgresql://u:{CANARY}@db/x"
    environ["RABBITMQ_URL"] = f"amqp://u:{CANARY}@mq//"
    settings = load({**environ, "ENVIRONMENT": "production", "RABBITMQ_HOST": "mq"})
    formatted = ["{}".format(settings.api_key), "%s" % (settings.api_key,)]  # noqa: UP031, UP032
    for text in (repr(settings), str(settings), f"{settings.api_key}", *formatted, repr(settings.postgres_dsn),
                 str(settings.amqp_url), " ".join(settings.production_problems()), " ".join(settings.no_effect_set())):
        assert CANARY not in text
    assert settings.openai_api_key.get_secret_value() == CANARY


def test_secrets_never_show_in_errors(tmp_path):
    (tmp_path / "url").write_text(f"mysql://u:{CANARY}@db/x\n")
    environ = {"DATABASE_URL": f"mysql://u:{CANARY}@db/x", "RABBITMQ_URL": f"http://u:{CANARY}@mq",
               "ORCHESTRATOR_PORT": "abc"}
    with pytest.raises(SettingsError) as caught:
        load(environ)
    assert CANARY not in str(caught.value) and CANARY not in repr(caught.value)
    assert (
        "DATABASE_URL: expected a URL starting with postgresql:// or postgres:// "
        "(the value is not shown: it is a secret)") in caught.value.problems
    assert len(caught.value.problems) == 3
    with pytest.raises(SettingsError) as caught:
        load({"DATABASE_URL_FILE": str(tmp_path / "url")})
    assert CANARY not in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load({"API_KEY": CANARY, "API_KEY_FILE": str(tmp_path / "url")})
    assert CANARY not in str(caught.value)


def test_secret_wrapper():
    secret = Secret(CANARY)
    assert repr(secret) == "Secret('**********')" and str(secret) == "**********" and f"{secret}" == "**********"
    assert secret == Secret(CANARY) and secret != Secret("other") and secret != CANARY
    assert hash(secret) == hash(Secret(CANARY))
    assert secret and not Secret("")


# --- No effect -----------------------------------------------------------------------------


def test_no_effect_set_names_the_variables_that_were_set():
    settings = load({"CELERY_BEAT_SCHEDULE_FILENAME": "beat", "CELERY_TASK_ACKS_LATE": "false",
                     "ORCHESTRATOR_PORT": "8003"})
    notes = settings.no_effect_set()
    reason = NO_EFFECT["CELERY_BEAT_SCHEDULE_FILENAME"]
    assert f"CELERY_BEAT_SCHEDULE_FILENAME is accepted but has no effect: {reason}" in notes
    assert any(note.startswith("CELERY_TASK_ACKS_LATE is accepted but has no effect") for note in notes)
    assert load().no_effect_set() == []


def test_no_effect_set_leaves_out_values_equal_to_the_default():
    environ = {"CELERY_BEAT_SCHEDULE_FILENAME": "celerybeat-schedule", "CELERY_TIMEZONE": "UTC",
               "SCHEDULER_TIMEZONE": "Europe/Paris"}
    assert load(environ).no_effect_set() == []
    assert load({**environ, "CELERY_TIMEZONE": "Asia/Tokyo"}).no_effect_set() == [
        "CELERY_TIMEZONE has no effect: SCHEDULER_TIMEZONE is set too and wins"]


def test_celery_only_variables_are_permanently_without_effect():
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_TASK_SERIALIZER", "CELERY_RESULT_SERIALIZER",
                 "CELERY_ACCEPT_CONTENT", "CELERY_BEAT_SCHEDULE_FILENAME"):
        assert name in NO_EFFECT


# --- The shipped example files ---------------------------------------------------------------


def test_the_development_example_loads():
    settings = load(env_file=REPO / "config" / "env" / ".env.development")
    assert settings.environment == "development" and settings.log_level == "DEBUG"
    assert (settings.state_backend, settings.cache_backend, settings.event_bus_backend) == (
        "postgres", "redis", "rabbitmq")
    assert settings.default_llm_model == "gpt-3.5-turbo"
    assert settings.production_problems() == []


def test_the_staging_example_loads():
    settings = load(env_file=REPO / "config" / "env" / ".env.staging")
    assert settings.environment == "staging" and settings.log_format == "json"
    assert settings.tls_enabled and settings.api_auth_enabled
    assert settings.production_problems() == []


def test_the_production_example_loads_but_is_refused_until_secrets_are_given():
    env_file = REPO / "config" / "env" / ".env.production"
    settings = load(env_file=env_file)
    assert settings.log_level == "WARNING" and settings.log_output == "file"
    assert settings.postgres_ssl_mode == "require" and settings.redis_ssl and settings.rabbitmq_ssl
    assert (settings.redis_state_ttl, settings.redis_config_ttl, settings.metrics_port) == (3600, 7200, 9090)
    problems = settings.production_problems()
    assert any(problem.startswith("API_KEY must be set") for problem in problems)
    assert any(problem.startswith("RABBITMQ_USER/RABBITMQ_PASSWORD") for problem in problems)
    ready = load({"API_KEY": GOOD_KEY, "RABBITMQ_USER": "app", "RABBITMQ_PASSWORD": CANARY}, env_file)
    assert ready.production_problems() == []


def test_the_env_files_set_only_known_variables():
    for path in (REPO / "config" / "env").glob(".env.*"):
        names = re.findall(r"^([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.MULTILINE)
        assert set(names) <= set(VARIABLES), path


def test_production_warns_about_weak_database_passwords_and_backends_without_tls():
    base = {"ENVIRONMENT": "production", "API_AUTH_ENABLED": "true", "API_KEY": "p" * 40}
    weak = load({**base, "POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "short-pass", "REDIS_HOST": "cache",
                 "RABBITMQ_HOST": "mq", "RABBITMQ_USER": "agent", "RABBITMQ_PASSWORD": "a-long-enough-pass"})
    assert weak.production_problems() == []  # allowed ...
    assert weak.production_warnings() == [  # ... but said
        "the PostgreSQL password is shorter than 16 characters",
        "PostgreSQL without required TLS (POSTGRES_SSL_MODE=prefer; use require or verify-full)",
        "Redis without TLS (REDIS_SSL=false)",
        "RabbitMQ without TLS (RABBITMQ_SSL=false / an amqp:// URL)",
        "the HTTP services without TLS (TLS_ENABLED=false): put a TLS proxy in front"]
    strong = load({**base, "POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "x" * 20, "POSTGRES_SSL_MODE": "verify-full",
                   "REDIS_HOST": "cache", "REDIS_SSL": "true", "RABBITMQ_HOST": "mq", "RABBITMQ_USER": "agent",
                   "RABBITMQ_PASSWORD": "y" * 20, "RABBITMQ_SSL": "true", "TLS_ENABLED": "true"})
    assert strong.production_warnings() == []
    assert load({"POSTGRES_HOST": "db", "POSTGRES_PASSWORD": "short"}).production_warnings() == []  # not production
