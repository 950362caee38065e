"""The schema classes on their own: defaults, checks, secrets, output."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from agentrunner.schema import (
    AgentConfig,
    AuthConfig,
    CollaborativeConfig,
    ContinuousConfig,
    LLMConfig,
    RetryConfig,
    ScheduleConfig,
    SchemaError,
    ToolConfig,
    as_dict,
    cron_expression,
    show,
    topic_pattern,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "agents.md"


def agent(**kwargs) -> AgentConfig:
    values = {"name": "support", "agent_type": "assistant", "execution_mode": "autonomous",
              "llm_config": LLMConfig(), "system_prompt": "You help."}
    return AgentConfig(**{**values, **kwargs})


def problems(build) -> list[tuple[str, str]]:
    with pytest.raises(SchemaError) as caught:
        build()
    return caught.value.problems


def test_defaults_are_the_references():
    llm = LLMConfig()
    assert (llm.temperature, llm.max_tokens, llm.top_p, llm.frequency_penalty, llm.presence_penalty, llm.timeout) == (
        0.7, 2000, 1.0, 0.0, 0.0, 60.0)
    assert (llm.top_k, llm.seed, llm.region, llm.endpoint_url, llm.base_url, llm.num_ctx, llm.num_predict,
            llm.repeat_penalty, llm.response_format) == (None,) * 9
    assert attrs.astuple(RetryConfig()) == (3, 5.0, True, 2.0, 60.0)
    assert attrs.astuple(ContinuousConfig()) == (900.0, 180.0, 100, "sliding_window", True, True)
    assert attrs.astuple(CollaborativeConfig()) == ([], 10, True, 1, 5, "hierarchical", 300.0)
    schedule = ScheduleConfig(type="interval", interval_seconds=300)
    assert (schedule.timezone, schedule.timeout_seconds, schedule.enabled) == ("UTC", 300.0, True)
    assert schedule.task_data == {}
    tool = ToolConfig(name="t", type="api")
    assert (tool.method, tool.timeout, tool.headers, tool.auth) == ("POST", 30.0, {}, None)
    assert AuthConfig(type="api_key", key="k").header == "X-API-Key"


def test_constructors_check_their_values():
    assert problems(lambda: LLMConfig(temperature=3.5)) == [("temperature", "must be between 0.0 and 2.0 (got 3.5)")]
    assert problems(lambda: LLMConfig(top_k=0)) == [("top_k", "must be at least 1 (got 0)")]
    assert problems(lambda: RetryConfig(max_retries=101)) == [("max_retries", "must be between 0 and 100 (got 101)")]
    assert problems(lambda: ContinuousConfig(conversation_pruning_strategy="drop")) == [
        ("conversation_pruning_strategy", "must be one of sliding_window, summarize (got 'drop')")]
    assert problems(lambda: agent(name="Bad Name"))[0][0] == "name"
    assert problems(lambda: agent(system_prompt="  \n")) == [("system_prompt", "must not be empty")]
    assert issubclass(SchemaError, ValueError)


def test_a_check_on_a_value_of_the_wrong_type_says_so():
    assert problems(lambda: LLMConfig(temperature="hot")) == [("temperature", "expected a number (got 'hot')")]


def test_cross_field_rules():
    assert problems(lambda: RetryConfig(retry_delay_seconds=10, max_retry_delay=5)) == [
        ("max_retry_delay", "must be at least retry_delay_seconds (10) (got 5)")]
    assert problems(lambda: CollaborativeConfig(min_collaborators=4, max_collaborators=2)) == [
        ("max_collaborators", "must be at least min_collaborators (4) (got 2)")]
    assert problems(lambda: ScheduleConfig(type="cron")) == [("cron", "required for type cron")]
    assert problems(lambda: ScheduleConfig(type="interval", interval_seconds=5, cron="* * * * *")) == [
        ("cron", "not allowed with type interval (use interval_seconds)")]
    tools = [ToolConfig(name="a", type="api"), ToolConfig(name="b", type="api"), ToolConfig(name="a", type="api")]
    assert problems(lambda: agent(tools=tools)) == [("tools[2].name", "duplicate tool name 'a' (also tools[0])")]


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ({"type": "bearer_token"}, ["token"]),
        ({"type": "bearer_token", "token": ""}, ["token"]),
        ({"type": "api_key"}, ["key"]),
        ({"type": "oauth2", "client_id": "me"}, ["token_url", "client_secret"]),
    ],
)
def test_each_auth_type_needs_its_fields(auth, missing):
    assert [field for field, _ in problems(lambda: AuthConfig(**auth))] == missing


def test_secrets_stay_out_of_repr_and_as_dict():
    auth = AuthConfig(type="oauth2", token_url="https://a/t", client_id="me", client_secret="s3cr3t")
    tool = ToolConfig(name="t", type="mcp", command="srv", env={"API_KEY": "s3cr3t"},
                      headers={"Authorization": "Bearer s3cr3t"}, auth=auth)
    config = agent(tools=[tool], source_file=Path("/x/support.yaml"))
    assert "s3cr3t" not in repr(config)
    data = as_dict(config)
    assert "s3cr3t" not in repr(data)
    assert data["tools"][0]["auth"]["client_secret"] == "***"
    assert data["tools"][0]["env"] == {"API_KEY": "***"}
    assert data["tools"][0]["auth"]["token"] is None  # an unset secret shows as unset
    assert "source_file" not in data and "mode_config" not in data and "explicit_fields" not in data["llm_config"]
    assert as_dict(config, redact=False)["tools"][0]["auth"]["client_secret"] == "s3cr3t"


def test_source_file_and_explicit_fields_do_not_affect_equality():
    assert agent(source_file=Path("a.yaml")) == agent(source_file=Path("b.yaml"))
    assert LLMConfig(explicit_fields=frozenset({"temperature"})) == LLMConfig()


def test_http_method_is_stored_upper_case():
    assert ToolConfig(name="t", type="api", method="patch").method == "PATCH"


@pytest.mark.parametrize(
    "expression",
    ["0 9 * * *", "*/15 * * * *", "0 0 * * 0", "0 9 1 * *", "0 0 1 1 *", "0 9 * * 1-5", "0 9 * * 7",
     "30 8 * * mon-fri", "0 12 1,15 * *", "0 0 * JAN,jul SUN", "5/10 * * * *", "0-30/5 9-17 * * *"],
)
def test_valid_cron_expressions(expression: str):
    assert cron_expression(expression) == []


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 9 * *", "must have 5 fields (minute hour day-of-month month day-of-week), got 4 in '0 9 * *'"),
        ("0 0 9 * * *", "must have 5 fields"),
        ("@hourly", "must have 5 fields"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day of month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day of week 8 is out of range 0-7"),
        ("0 0 * * fri-mon", "day of week: the range 'fri-mon' runs backwards"),
        ("*/0 * * * *", "minute: the step in '*/0' must be at least 1"),
        ("0 0 * * 1#2", "day of week: '1#2' is not '*', a number, a range a-b or a step */n"),
        ("0 0 ? * *", "day of month: '?' is not '*', a number, a range a-b or a step */n"),
        ("0 0 L * *", "day of month: 'L' is not a number"),
        ("H 0 * * *", "minute: 'H' is not a number"),
        ("0 0 * * funday", "day of week: 'funday' is not a number or a name (sun, mon, tue, wed, thu, fri, sat)"),
    ],
)
def test_invalid_cron_expressions(expression: str, message: str):
    [(field, text)] = cron_expression(expression)
    assert field == "" and message in text


@pytest.mark.parametrize("pattern", ["a", "a.b.c", "slack.command.*", "slack.#", "#", "*.*", "a.*.#", "a..b"])
def test_valid_topic_patterns(pattern: str):
    assert topic_pattern(pattern) == []


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must be a non-empty topic pattern"),
        ("slack.command*", "the word 'command*' mixes a wildcard with other characters, which RabbitMQ treats "
                           "literally"),
        ("slack.#events", "the word '#events' mixes a wildcard"),
        ("a.**", "the word '**' mixes a wildcard"),
        ("é" * 128, "is 256 bytes long; a topic pattern holds at most 255 bytes"),
    ],
)
def test_invalid_topic_patterns(pattern: str, message: str):
    [(_, text)] = topic_pattern(pattern)
    assert message in text


def test_time_zones_are_checked():
    assert ScheduleConfig(type="cron", cron="0 9 * * *", timezone="Europe/Paris").timezone == "Europe/Paris"
    for bad in ("Mars/Base", "", "../../etc/passwd"):
        [(field, message)] = problems(lambda bad=bad: ScheduleConfig(type="cron", cron="0 9 * * *", timezone=bad))
        assert field == "timezone" and message.startswith("unknown time zone")


def test_show_speaks_yaml():
    assert [show(v) for v in (None, True, False, 3, 2.5, "x", [1], {"a": 1})] == [
        "null", "true", "false", "3", "2.5", "'x'", "a list", "a mapping"]
    assert len(show("x" * 500)) <= 60


def test_the_reference_documents_every_yaml_field():
    text = DOCS.read_text()
    for cls in (AgentConfig, LLMConfig, ToolConfig, AuthConfig, RetryConfig, ContinuousConfig, CollaborativeConfig,
                ScheduleConfig):
        for field in attrs.fields(cls):
            if field.metadata.get("yaml", True):
                assert f"`{field.name}`" in text, f"docs/agents.md does not document {cls.__name__}.{field.name}"


def test_as_dict_hides_the_password_of_a_url():
    from agentrunner.schema import LLMConfig, as_dict, redact_url_password

    llm = LLMConfig(provider="ollama", model="llama2", base_url="http://bot:s3cret@gpu.local:11434")
    assert as_dict(llm)["base_url"] == "http://bot:***@gpu.local:11434"
    assert as_dict(llm, redact=False)["base_url"] == "http://bot:s3cret@gpu.local:11434"
    assert redact_url_password("https://tok3n@git.example.com/x") == "https://***@git.example.com/x"
    assert redact_url_password("https://example.com/a@b") == "https://example.com/a@b"


def test_an_execution_survives_a_trip_through_json():
    from datetime import UTC, datetime

    from agentrunner.records import Execution

    execution = Execution("e1", "a", "autonomous", status="completed", input={"q": 1}, result="r",
                          usage={"input_tokens": 2}, attempts=2, started_at=datetime(2026, 1, 1, tzinfo=UTC),
                          completed_at=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert Execution.from_json(execution.to_json()) == execution
