"""The agent loader: YAML safety, interpolation, strict structuring, registry checks, directories.

The registry is built by hand from tiny fakes, so these tests depend on no
plugin (the real default plugins are tested on their own).
"""

from __future__ import annotations

import enum
import os
import textwrap
import time
import types
from pathlib import Path

import attrs
import pytest

from agentrunner.agent_loader import (
    AgentConfigError,
    ConfigProblem,
    LoaderOptions,
    agent_files,
    interpolate_text,
    load_agent_file,
    load_agent_text,
    load_agents,
    validate_agent_references,
)
from agentrunner.plugins import Registry
from agentrunner.schema import CollaborativeConfig, ContinuousConfig, LLMConfig, ScheduleConfig, at_least, checked

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "config" / "agents"
BROKEN = Path(__file__).resolve().parent / "broken_agents"
ALL_LLM_OPTIONS = frozenset(f.name for f in attrs.fields(LLMConfig))


# --- Fakes ---------------------------------------------------------------------------------


@attrs.define
class FakeProvider:
    name: str
    supported_options: frozenset[str] = ALL_LLM_OPTIONS
    problems: list[tuple[str, str]] = attrs.field(factory=list)

    def validate(self, llm_config):
        return self.problems


@attrs.define
class FakeToolType:
    name: str
    required_fields: tuple[str, ...] = ()
    problems: list[tuple[str, str]] = attrs.field(factory=list)

    def validate(self, tool):
        return self.problems


@attrs.define
class FakeMode:
    name: str
    config_section: str | None = None
    config_type: type | None = None
    config_required: bool = False


def make_registry(*, providers=("echo",)) -> Registry:
    """The four built-in modes (owning their sections), the given providers, function and api tools."""
    registry = Registry()
    for mode in (
        FakeMode("autonomous"),
        FakeMode("continuous", "continuous_config", ContinuousConfig),
        FakeMode("collaborative", "collaborative_config", CollaborativeConfig),
        FakeMode("scheduled", "schedule_config", ScheduleConfig, config_required=True),
    ):
        registry.execution_modes[mode.name] = mode
    for name in providers:
        registry.providers[name] = FakeProvider(name)
    registry.tool_types["function"] = FakeToolType("function", ("function",))
    registry.tool_types["api"] = FakeToolType("api", ("url",))
    return registry


def options(**kwargs) -> LoaderOptions:
    kwargs.setdefault("environ", {})
    return LoaderOptions(**kwargs)


MINIMAL = """\
name: support
agent_type: assistant
execution_mode: autonomous
llm_config:
  temperature: 0.5
system_prompt: You help.
"""


def load(text: str, *, registry: Registry | None = None, filename: str = "support.yaml", **option_kwargs):
    return load_agent_text(
        textwrap.dedent(text), filename=filename, options=options(**option_kwargs), registry=registry or make_registry()
    )


def problems_of(text: str, **kwargs) -> list[str]:
    """Every problem of a failing file, as strings (errors and warnings)."""
    with pytest.raises(AgentConfigError) as caught:
        load(text, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def agent_yaml(name: str, mode: str = "autonomous", extra: str = "") -> str:
    head = f"name: {name}\nagent_type: assistant\nexecution_mode: {mode}\n"
    return head + "llm_config: {}\nsystem_prompt: Hi.\n" + extra


# --- The examples ----------------------------------------------------------------------------


def test_every_example_agent_validates_without_a_warning():
    result = load_agents(EXAMPLES, options(), make_registry())
    assert [str(p) for p in result.errors] == []
    assert [str(p) for p in result.warnings] == []
    assert set(result.agents) == {
        "autonomous-agent", "continuous-agent", "collaborative-agent", "scheduled-agent", "interval-agent",
        "data-analyzer", "content-writer", "tool-agent",
    }
    modes = {agent.execution_mode for agent in result.agents.values()}
    assert modes == {"autonomous", "continuous", "collaborative", "scheduled"}


def test_the_examples_leave_provider_and_model_to_the_settings():
    result = load_agents(EXAMPLES, options(default_provider="echo", default_model="echo-1"), make_registry())
    for agent in result.agents.values():
        assert (agent.llm_config.provider, agent.llm_config.model) == ("echo", "echo-1")
        assert {"provider", "model"}.isdisjoint(agent.llm_config.explicit_fields)
        assert agent.system_prompt.strip()
        assert "mcp" not in {tool.type for tool in agent.tools}


def test_the_examples_carry_their_mode_sections():
    agents = load_agents(EXAMPLES, options(), make_registry()).agents
    assert agents["scheduled-agent"].schedule_config.cron == "0 9 * * *"
    assert agents["scheduled-agent"].mode_config is agents["scheduled-agent"].schedule_config
    assert agents["interval-agent"].schedule_config.interval_seconds == 300
    assert agents["continuous-agent"].continuous_config.max_conversation_history == 100
    collaborators = agents["collaborative-agent"].collaborative_config.preferred_collaborators
    assert collaborators == ["data-analyzer", "content-writer"]
    assert agents["autonomous-agent"].mode_config is None


# --- Broken files: one rule each ----------------------------------------------------------------

BROKEN_ENV = {"AGENT_TEMPERATURE": "0.5"}


def _broken_files() -> list[Path]:
    return sorted(BROKEN.glob("*.yaml"))


def test_there_is_a_broken_file_for_each_rule():
    assert len(_broken_files()) >= 20


@pytest.mark.parametrize("path", _broken_files(), ids=lambda p: p.name)
def test_a_broken_file_fails_with_the_error_it_expects(path: Path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# expect: "), f"{path.name} does not start with '# expect: '"
    expected = first_line.removeprefix("# expect: ")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_file(path, options(environ=BROKEN_ENV), make_registry(), filename=path.name)
    errors = [str(problem) for problem in caught.value.errors]
    assert any(expected in error for error in errors), errors


def test_a_directory_of_broken_files_loads_no_agent_but_reports_each_file():
    result = load_agents(BROKEN, options(environ=BROKEN_ENV), make_registry())
    assert result.agents == {}
    assert {problem.file for problem in result.errors} == {path.name for path in _broken_files()}


# --- Problems and their format -------------------------------------------------------------------


def test_a_problem_prints_file_field_and_message():
    assert str(ConfigProblem("support.yaml", "llm_config.temperature", "must be between 0.0 and 2.0 (got 3.5)")) == (
        "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)"
    )
    assert str(ConfigProblem("support.yaml", "", "the file is empty")) == "support.yaml: the file is empty"


def test_every_error_of_a_file_is_reported_at_once():
    problems = problems_of(
        """\
        name: Support
        agent_type: helper
        execution_mode: autonomous
        llm_config:
          temperature: 3.5
          max_tokens: 0
        system_prompt: You help.
        tools:
          - {name: "bad name", type: function, function: "statistics:mean"}
        retry_config:
          max_retries: -1
        """
    )
    assert problems == [
        "support.yaml: name: must be 1-64 lowercase letters, digits and hyphens, starting and ending with a "
        "letter or digit (got 'Support')",
        "support.yaml: agent_type: must be one of assistant, specialist, coordinator (got 'helper')",
        "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 3.5)",
        "support.yaml: llm_config.max_tokens: must be at least 1 (got 0)",
        "support.yaml: tools[0].name: must be 1-64 letters, digits, '_' or '-' (got 'bad name')",
        "support.yaml: retry_config.max_retries: must be between 0 and 100 (got -1)",
    ]


def test_the_error_carries_the_files_warnings_and_the_agent_name():
    with pytest.raises(AgentConfigError) as caught:
        load(MINIMAL.replace("temperature: 0.5", "temperature: 9\n  temprature: 1"))
    error = caught.value
    assert error.agent_name == "support"
    assert [str(p) for p in error.errors] == [
        "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 9)"
    ]
    assert [str(p) for p in error.warnings] == [
        "support.yaml: llm_config.temprature: unknown field (did you mean 'temperature'?)"
    ]
    assert str(error) == "support.yaml: llm_config.temperature: must be between 0.0 and 2.0 (got 9)"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("description: 3", "description: expected a string (got 3); write it in quotes"),
        ("description: 2024-01-01", "description: expected a string (got a date (2024-01-01)); write it in quotes"),
        ("tags: urgent", "tags: expected a list (got 'urgent')"),
        ("tags: [a, [b]]", "tags[1]: expected a string (got a list)"),
        ("event_subscriptions: ['']", "event_subscriptions[0]: must be a non-empty topic pattern"),
        ("event_subscriptions: ['" + "a" * 256 + "']", "event_subscriptions[0]: is 256 bytes long; a topic pattern "
         "holds at most 255 bytes"),
        ("tools: {name: x}", "tools: expected a list (got a mapping)"),
        ("tools: [lookup]", "tools[0]: expected a mapping of fields (got 'lookup')"),
        ("retry_config: {backoff_multiplier: 0.5}", "retry_config.backoff_multiplier: must be at least 1 (got 0.5)"),
        ("retry_config: {max_retries: true}", "retry_config.max_retries: expected an integer (got true)"),
        ("retry_config: {retry_delay_seconds: '5'}", "retry_config.retry_delay_seconds: expected a number (got '5')"),
        ("retry_config: {retry_delay_seconds: .inf}", "retry_config.retry_delay_seconds: expected a finite number"),
        ("retry_config: {retry_delay_seconds: -1}", "retry_config.retry_delay_seconds: must be at least 0 (got -1)"),
        ("retry_config: {max_retry_delay: -1}", "retry_config.max_retry_delay: must be at least 0 (got -1)"),
        ("retry_config: [1]", "retry_config: expected a mapping of fields (got a list)"),
    ],
)
def test_top_level_rules(line: str, expected: str):
    assert f"support.yaml: {expected}" in "\n".join(problems_of(MINIMAL + line + "\n"))


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("top_p: 1.5", "llm_config.top_p: must be between 0.0 and 1.0 (got 1.5)"),
        ("frequency_penalty: -3", "llm_config.frequency_penalty: must be between -2.0 and 2.0 (got -3)"),
        ("presence_penalty: 2.5", "llm_config.presence_penalty: must be between -2.0 and 2.0 (got 2.5)"),
        ("timeout: 0", "llm_config.timeout: must be greater than 0 (got 0)"),
        ("seed: 4.2", "llm_config.seed: expected an integer (got 4.2)"),
        ("top_k: 0", "llm_config.top_k: must be at least 1 (got 0)"),
        ("num_ctx: 0", "llm_config.num_ctx: must be at least 1 (got 0)"),
        ("num_predict: -3", "llm_config.num_predict: must be at least -2 (got -3)"),
        ("repeat_penalty: -0.1", "llm_config.repeat_penalty: must be at least 0 (got -0.1)"),
        ("region: ''", "llm_config.region: must not be empty"),
        ("endpoint_url: ftp://x", "llm_config.endpoint_url: must be an http:// or https:// URL (got 'ftp://x')"),
        ("response_format: json", "llm_config.response_format: expected a mapping (got 'json')"),
        ("response_format: {}", "llm_config.response_format.type: required field is missing"),
        ("response_format: {type: json_schema}", "llm_config.response_format.json_schema: required for type "
         "json_schema"),
        ("provider: ''", "llm_config.provider: must not be empty"),
        ("max_tokens: '2000'", "llm_config.max_tokens: expected an integer (got '2000')"),
    ],
)
def test_llm_config_rules(field: str, expected: str):
    text = MINIMAL.replace("temperature: 0.5", field)
    assert f"support.yaml: {expected}" in "\n".join(problems_of(text))


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("{name: t, type: api, url: 'https://x', method: FETCH}", "tools[0].method: must be one of GET, POST, PUT, "
         "PATCH, DELETE (got 'FETCH')"),
        ("{name: t, type: api, url: 'https://x', timeout: 0}", "tools[0].timeout: must be greater than 0 (got 0)"),
        ("{name: t, type: api, url: 'https://x', headers: {X-Retries: 3}}", "tools[0].headers.X-Retries: expected a "
         "string (got 3)"),
        ("{name: t, type: api, url: 'https://x', auth: {type: basic}}", "tools[0].auth.type: must be one of "
         "bearer_token, api_key, oauth2 (got 'basic')"),
        ("{name: t, type: api, url: 'https://x', auth: {type: api_key}}", "tools[0].auth.key: required for auth "
         "type api_key"),
        ("{name: t, type: api, url: 'https://x', auth: {type: oauth2, token_url: x, client_id: a, client_secret: b}}",
         "tools[0].auth.token_url: must be an http:// or https:// URL (got 'x')"),
        ("{name: t, type: function}", "tools[0].function: required for tool type 'function'"),
        ("{type: function, function: 'a:b'}", "tools[0].name: required field is missing"),
        ("{name: t, type: mcp, command: srv, args: [1]}", "tools[0].args[0]: expected a string (got 1)"),
        ("{name: t, type: mcp, command: srv, env: {A: 1}}", "tools[0].env.A: expected a string (got 1)"),
    ],
)
def test_tool_rules(tool: str, expected: str):
    assert f"support.yaml: {expected}" in "\n".join(problems_of(MINIMAL + f"tools:\n  - {tool}\n"))


def test_a_secret_of_the_wrong_type_is_not_echoed():
    problems = problems_of(MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x', "
                                     "auth: {type: bearer_token, token: 123456789}}\n")
    assert "support.yaml: tools[0].auth.token: expected a string (the value is not shown: it is a secret)" in problems
    assert not any("123456789" in problem for problem in problems)


def test_a_loaded_agent_keeps_secrets_out_of_its_repr():
    agent, _ = load(
        MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x', headers: {Authorization: 'Bearer s3cr3t-h'},"
                  " auth: {type: oauth2, token_url: 'https://a/t', client_id: me, client_secret: s3cr3t-c}}\n"
    )
    assert "s3cr3t" not in repr(agent)
    assert agent.tools[0].auth.client_secret == "s3cr3t-c"


def test_http_method_is_case_insensitive_and_stored_upper_case():
    agent, _ = load(MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x', method: get}\n")
    assert agent.tools[0].method == "GET"


def test_free_form_data_must_be_json():
    text = agent_yaml("reporter", "scheduled", "schedule_config:\n  type: interval\n  interval_seconds: 60\n"
                                               "  task_data:\n    since: 2024-01-01\n")
    assert "support.yaml: schedule_config.task_data.since: not JSON data (got a date (2024-01-01)); write it in " \
           "quotes" in problems_of(text)


def test_null_means_left_out_where_a_default_exists():
    agent, warnings = load(MINIMAL + "description:\ntags:\ntools:\nretry_config:\n", default_max_retries=7)
    assert (agent.description, agent.tags, agent.tools, agent.retry_config.max_retries) == ("", [], [], 7)
    assert warnings == []
    assert "support.yaml: system_prompt: required field is missing" in problems_of(
        MINIMAL.replace("system_prompt: You help.", "system_prompt:")
    )


# --- Unknown fields and strict mode ----------------------------------------------------------------


def test_an_unknown_field_warns_with_a_suggestion():
    agent, warnings = load(MINIMAL + "desciption: typo\nllm_config_extra: 1\n")
    assert agent.name == "support"
    assert [str(w) for w in warnings] == [
        "support.yaml: desciption: unknown field (did you mean 'description'?)",
        "support.yaml: llm_config_extra: unknown field (did you mean 'llm_config'?)",
    ]
    assert {w.severity for w in warnings} == {"warning"}


def test_an_unknown_nested_field_warns_with_its_path():
    _, warnings = load(MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x', auth: {type: api_key, "
                                 "key: k, hedaer: X-Key}}\n")
    assert [str(w) for w in warnings] == ["support.yaml: tools[0].auth.hedaer: unknown field (did you mean 'header'?)"]


def test_strict_mode_turns_warnings_into_errors():
    problems = problems_of(MINIMAL.replace("temperature: 0.5", "temprature: 0.5"), strict=True)
    assert problems == ["support.yaml: llm_config.temprature: unknown field (did you mean 'temperature'?)"]


def test_the_fields_not_read_from_yaml_cannot_be_set_from_yaml():
    _, warnings = load(MINIMAL + "source_file: /etc/passwd\nmode_config: {}\n")
    assert [w.field for w in warnings] == ["source_file", "mode_config"]


# --- Providers ---------------------------------------------------------------------------------------


def test_default_provider_and_model_fill_what_the_agent_leaves_out():
    agent, _ = load(MINIMAL, default_provider="echo", default_model="echo-large")
    assert (agent.llm_config.provider, agent.llm_config.model) == ("echo", "echo-large")
    assert agent.llm_config.explicit_fields == frozenset({"temperature"})


def test_an_unknown_provider_names_the_distribution_to_install():
    problems = problems_of(MINIMAL.replace("temperature: 0.5", "provider: anthropic"))
    assert problems == [
        "support.yaml: llm_config.provider: unknown provider 'anthropic' (installed: echo); install it with: "
        "pip install agentrunner-anthropic"
    ]


def test_an_unknown_default_provider_says_where_it_came_from():
    problems = problems_of(MINIMAL, default_provider="ollama")
    assert problems == [
        "support.yaml: llm_config.provider: unknown provider 'ollama' (installed: echo); install it with: "
        "pip install agentrunner-ollama (from DEFAULT_LLM_PROVIDER)"
    ]


def test_an_option_the_provider_ignores_warns_only_when_the_agent_set_it():
    registry = make_registry()
    registry.providers["echo"].supported_options = frozenset({"model", "temperature", "max_tokens"})
    _, warnings = load(MINIMAL.replace("temperature: 0.5", "temperature: 0.5\n  top_k: 40"), registry=registry)
    assert [str(w) for w in warnings] == ["support.yaml: llm_config.top_k: not supported by provider 'echo'"]
    _, warnings = load(MINIMAL, registry=registry)  # top_p, timeout ... keep their defaults: nothing to say
    assert warnings == []
    problems = problems_of(MINIMAL.replace("temperature: 0.5", "top_k: 40"), registry=registry, strict=True)
    assert problems == ["support.yaml: llm_config.top_k: not supported by provider 'echo'"]


def test_a_provider_can_veto_a_configuration():
    registry = make_registry()
    registry.providers["echo"].problems = [("model", "no such model 'gpt-9'"), ("", "region and base_url conflict")]
    assert problems_of(MINIMAL, registry=registry) == [
        "support.yaml: llm_config.model: no such model 'gpt-9'",
        "support.yaml: llm_config: region and base_url conflict",
    ]


def test_a_provider_can_refuse_an_agent_its_model_cannot_serve():
    class NoSystemPrompt(FakeProvider):
        def validate_agent(self, agent):
            if agent.system_prompt:
                return [("system_prompt", f"model {agent.llm_config.model} takes no system prompt")]
            return []

    registry = make_registry()
    registry.providers["echo"] = NoSystemPrompt("echo")
    problems = problems_of(MINIMAL, registry=registry)
    assert len(problems) == 1
    assert problems[0].startswith("support.yaml: system_prompt: model ") and "takes no system prompt" in problems[0]


def test_a_crashing_plugin_validator_is_a_problem_not_a_crash():
    class CrashingToolType:
        name = "api"
        required_fields = ("url",)

        def validate(self, tool):
            raise RuntimeError("bug")

    registry = make_registry()
    registry.tool_types["api"] = CrashingToolType()
    problems = problems_of(MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x'}\n", registry=registry)
    assert problems == ["support.yaml: tools[0]: tool type 'api' could not validate this entry: RuntimeError('bug')"]


# --- Tool types ----------------------------------------------------------------------------------------


def test_a_tool_type_can_veto_a_tool():
    registry = make_registry()
    registry.tool_types["api"].problems = [("url", "must be an http:// or https:// URL (got 'file:///x')")]
    problems = problems_of(MINIMAL + "tools:\n  - {name: t, type: api, url: 'file:///x'}\n", registry=registry)
    assert problems == ["support.yaml: tools[0].url: must be an http:// or https:// URL (got 'file:///x')"]


# --- Execution modes and their sections ----------------------------------------------------------------


def test_an_unknown_mode_lists_the_installed_ones():
    problems = problems_of(MINIMAL.replace("autonomous", "shout"))
    assert problems == [
        "support.yaml: execution_mode: unknown execution mode 'shout' "
        "(installed: autonomous, collaborative, continuous, scheduled)"
    ]


def test_a_section_of_another_mode_is_ignored_with_a_warning():
    agent, warnings = load(MINIMAL + "continuous_config:\n  max_conversation_history: 5\n")
    assert [str(w) for w in warnings] == [
        "support.yaml: continuous_config: ignored: execution_mode is autonomous, not continuous"
    ]
    assert agent.continuous_config is None and agent.mode_config is None


def test_a_section_no_installed_mode_owns_is_an_unknown_field():
    registry = make_registry()
    del registry.execution_modes["continuous"]
    _, warnings = load(MINIMAL + "continuous_config: {}\n", registry=registry)
    assert [str(w) for w in warnings] == ["support.yaml: continuous_config: unknown field"]


def test_a_missing_optional_section_gets_the_settings_defaults():
    section_defaults = {"continuous_config": {"idle_timeout_seconds": 60, "save_interval_seconds": 10,
                                              "max_conversation_history": 7}}
    agent, _ = load(agent_yaml("chat", "continuous"), section_defaults=section_defaults)
    assert agent.continuous_config == ContinuousConfig(idle_timeout_seconds=60, save_interval_seconds=10,
                                                       max_conversation_history=7)
    assert agent.mode_config is agent.continuous_config
    agent, _ = load(agent_yaml("chat", "continuous", "continuous_config:\n  max_conversation_history: 3\n"),
                    section_defaults=section_defaults)
    assert (agent.continuous_config.max_conversation_history, agent.continuous_config.idle_timeout_seconds) == (3, 60)


def test_the_schedule_timezone_defaults_to_the_setting():
    text = agent_yaml("report", "scheduled", "schedule_config: {type: cron, cron: '0 9 * * 1-5'}\n")
    agent, _ = load(text, section_defaults={"schedule_config": {"timezone": "Europe/Paris"}})
    assert agent.schedule_config.timezone == "Europe/Paris"
    text = agent_yaml("report", "scheduled", "schedule_config: {type: cron, cron: '0 9 * * 1-5', timezone: UTC}\n")
    agent, _ = load(text, section_defaults={"schedule_config": {"timezone": "Asia/Tokyo"}})
    assert agent.schedule_config.timezone == "UTC"


def test_retry_defaults_come_from_the_settings():
    agent, _ = load(MINIMAL, default_max_retries=9, default_retry_delay=1.5)
    assert (agent.retry_config.max_retries, agent.retry_config.retry_delay_seconds) == (9, 1.5)
    agent, _ = load(MINIMAL + "retry_config: {max_retries: 0}\n", default_max_retries=9, default_retry_delay=1.5)
    assert (agent.retry_config.max_retries, agent.retry_config.retry_delay_seconds) == (0, 1.5)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("schedule_config: {type: weekly}", "schedule_config.type: must be one of cron, interval (got 'weekly')"),
        ("schedule_config: {type: cron}", "schedule_config.cron: required for type cron"),
        ("schedule_config: {type: interval}", "schedule_config.interval_seconds: required for type interval"),
        ("schedule_config: {type: interval, interval_seconds: 60, cron: '* * * * *'}",
         "schedule_config.cron: not allowed with type interval (use interval_seconds)"),
        ("schedule_config: {type: interval, interval_seconds: 1.5}",
         "schedule_config.interval_seconds: expected an integer (got 1.5)"),
        ("schedule_config: {type: cron, cron: '0 9 * *'}", "schedule_config.cron: must have 5 fields"),
        ("schedule_config: {type: cron, cron: '0 0 9 * * *'}", "schedule_config.cron: must have 5 fields"),
        ("schedule_config: {type: cron, cron: '@daily'}", "schedule_config.cron: must have 5 fields"),
        ("schedule_config: {type: cron, cron: '0 9 * * 8'}", "schedule_config.cron: day of week 8 is out of range 0-7"),
        ("schedule_config: {type: cron, cron: '0 9 L * *'}", "schedule_config.cron: day of month: 'L' is not a number"),
        ("schedule_config: {type: interval, interval_seconds: 5, timeout_seconds: 0}",
         "schedule_config.timeout_seconds: must be greater than 0 (got 0)"),
        ("schedule_config: {type: interval, interval_seconds: 5, enabled: 'yes'}",
         "schedule_config.enabled: expected true or false (got 'yes')"),
        ("schedule_config: {type: interval, interval_seconds: 5, task_data: [1]}",
         "schedule_config.task_data: expected a mapping (got a list)"),
        ("schedule_config: daily", "schedule_config: expected a mapping of fields (got 'daily')"),
        ("schedule_config:", "schedule_config: required for execution_mode scheduled"),
    ],
)
def test_schedule_rules(section: str, expected: str):
    assert f"support.yaml: {expected}" in "\n".join(problems_of(agent_yaml("report", "scheduled", section + "\n")))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{idle_timeout_seconds: 0}", "continuous_config.idle_timeout_seconds: must be greater than 0 (got 0)"),
        ("{save_interval_seconds: -5}", "continuous_config.save_interval_seconds: must be greater than 0 (got -5)"),
        ("{max_conversation_history: 0}", "continuous_config.max_conversation_history: must be at least 1 (got 0)"),
        ("{auto_save_on_shutdown: 1}", "continuous_config.auto_save_on_shutdown: expected true or false (got 1)"),
        ("{restore_on_startup: 'false'}", "continuous_config.restore_on_startup: expected true or false (got 'false')"),
    ],
)
def test_continuous_rules(section: str, expected: str):
    text = agent_yaml("chat", "continuous", f"continuous_config: {section}\n")
    assert f"support.yaml: {expected}" in "\n".join(problems_of(text))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{max_plan_steps: 0}", "collaborative_config.max_plan_steps: must be at least 1 (got 0)"),
        ("{min_collaborators: 0}", "collaborative_config.min_collaborators: must be at least 1 (got 0)"),
        ("{planning_strategy: vote}", "collaborative_config.planning_strategy: must be one of hierarchical, "
         "consensus, sequential (got 'vote')"),
        ("{preferred_collaborators: [Data_Analyzer]}", "collaborative_config.preferred_collaborators[0]: must be "
         "1-64 lowercase letters"),
        ("{preferred_collaborators: [a], min_collaborators: 2}", "collaborative_config.preferred_collaborators: "
         "names 1 agent(s), fewer than min_collaborators (2)"),
        ("{preferred_collaborators: [a, a]}", "collaborative_config.preferred_collaborators[1]: 'a' is already "
         "listed at [0]"),
        ("{timeout_seconds: 0}", "collaborative_config.timeout_seconds: must be greater than 0 (got 0)"),
        ("{allow_human_clarification: no}", None),  # YAML 1.1 'no' is a boolean: accepted
    ],
)
def test_collaborative_rules(section: str, expected: str | None):
    text = agent_yaml("lead", "collaborative", f"collaborative_config: {section}\n")
    if expected is None:
        agent, _ = load(text)
        assert agent.collaborative_config.allow_human_clarification is False
    else:
        assert f"support.yaml: {expected}" in "\n".join(problems_of(text))


@attrs.frozen
class ShoutConfig:
    """A third-party mode's section class, using the schema's declared checks."""

    exclamations: int = attrs.field(default=1, **checked(at_least(1)))
    suffix: str = "!"


@attrs.frozen
class StrictShoutConfig:
    """A third-party section with a required field and an attrs validator of its own."""

    volume: int = attrs.field(validator=attrs.validators.le(11))


def test_a_third_party_mode_section_is_structured_and_checked_generically():
    registry = make_registry()
    registry.execution_modes["shout"] = FakeMode("shout", "shout_config", ShoutConfig)
    agent, warnings = load(agent_yaml("loud", "shout", "shout_config:\n  exclamations: 3\n"), registry=registry)
    assert agent.mode_config == ShoutConfig(exclamations=3)
    assert warnings == []
    agent, _ = load(agent_yaml("loud", "shout"), registry=registry)
    assert agent.mode_config == ShoutConfig()
    problems = problems_of(agent_yaml("loud", "shout", "shout_config: {exclamations: 0, sufix: '?'}\n"),
                           registry=registry)
    assert problems == [
        "support.yaml: shout_config.sufix: unknown field (did you mean 'suffix'?)",
        "support.yaml: shout_config.exclamations: must be at least 1 (got 0)",
    ]
    # A section of a third-party mode is ignored for the other modes, like a built-in one.
    _, warnings = load(MINIMAL + "shout_config: {}\n", registry=registry)
    assert [str(w) for w in warnings] == [
        "support.yaml: shout_config: ignored: execution_mode is autonomous, not shout"
    ]


def test_a_third_party_section_with_required_fields_and_own_validators():
    registry = make_registry()
    registry.execution_modes["amp"] = FakeMode("amp", "amp_config", StrictShoutConfig)
    assert problems_of(agent_yaml("amp", "amp"), registry=registry) == [
        "support.yaml: amp_config.volume: required field is missing"
    ]
    problems = problems_of(agent_yaml("amp", "amp", "amp_config: {volume: 12}\n"), registry=registry)
    assert len(problems) == 1 and problems[0].startswith("support.yaml: amp_config: 'volume' must be <= 11")


class Loudness(enum.Enum):
    SOFT = "soft"
    LOUD = "loud"


@attrs.frozen
class TunedShoutConfig:
    """A third-party section with types the loader leaves to cattrs (its strict hooks still apply)."""

    levels: tuple[int, ...] = ()
    loudness: Loudness = Loudness.LOUD


def test_other_types_of_a_third_party_section_go_through_the_strict_converter():
    registry = make_registry()
    registry.execution_modes["tuned"] = FakeMode("tuned", "tuned_config", TunedShoutConfig)
    agent, _ = load(agent_yaml("tuned", "tuned", "tuned_config: {levels: [1, 2], loudness: soft}\n"),
                    registry=registry)
    assert agent.mode_config == TunedShoutConfig(levels=(1, 2), loudness=Loudness.SOFT)
    problems = problems_of(agent_yaml("tuned", "tuned", "tuned_config: {levels: [1, '2', 2.5], loudness: deafening}\n"),
                           registry=registry)
    assert problems == [
        "support.yaml: tuned_config.levels[1]: expected an integer (got '2')",
        "support.yaml: tuned_config.levels[2]: expected an integer (got 2.5)",
        "support.yaml: tuned_config.loudness: invalid value for type, expected Loudness",
    ]


def test_a_required_third_party_section():
    registry = make_registry()
    registry.execution_modes["shout"] = FakeMode("shout", "shout_config", ShoutConfig, config_required=True)
    assert problems_of(agent_yaml("loud", "shout"), registry=registry) == [
        "support.yaml: shout_config: required for execution_mode shout"
    ]


# --- Interpolation -----------------------------------------------------------------------------------------


def test_variables_are_interpolated_in_every_string():
    text = MINIMAL.replace("You help.", "'You help ${TEAM}. Cost: $$5, literal: $${HOME}'") + (
        "tags: ['${TEAM}', '${REGION:-eu}', '${EMPTY:-fallback}']\n"
        "tools:\n  - {name: t, type: api, url: '${API_URL}/v1', auth: {type: bearer_token, token: '${TOKEN}'}}\n"
    )
    environ = {"TEAM": "support", "API_URL": "https://api.example.com", "TOKEN": "${TEAM}", "EMPTY": ""}
    agent, _ = load(text, environ=environ)
    assert agent.system_prompt == "You help support. Cost: $$5, literal: ${HOME}"
    assert agent.tags == ["support", "eu", "fallback"]
    assert agent.tools[0].url == "https://api.example.com/v1"
    assert agent.tools[0].auth.token == "${TEAM}"  # a value is not interpolated again


def test_an_unset_variable_names_the_variable_and_the_field():
    text = MINIMAL + "tools:\n  - {name: t, type: api, url: 'https://x', auth: {type: bearer_token, " \
                     "token: '${TOOL_API_TOKEN}'}}\n"
    assert problems_of(text) == ["support.yaml: tools[0].auth.token: environment variable TOOL_API_TOKEN is not set"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a ${1BAD} b", "invalid variable reference '${1BAD}' (use ${NAME} or ${NAME:-default})"),
        ("a ${A-b} b", "invalid variable reference '${A-b}' (use ${NAME} or ${NAME:-default})"),
        ("a ${} b", "invalid variable reference '${}' (use ${NAME} or ${NAME:-default})"),
        ("a ${OPEN", "unterminated '${' (write '$${' for a literal '${')"),
        ("${MISSING}", "environment variable MISSING is not set"),
    ],
)
def test_interpolation_problems(text: str, problem: str):
    assert interpolate_text(text, {})[1] == [problem]


def test_interpolation_leaves_other_dollars_alone():
    assert interpolate_text("$HOME costs $5 and $$ stays", {"HOME": "/root"}) == ("$HOME costs $5 and $$ stays", [])


def test_typed_fields_only_take_yaml_values():
    problems = problems_of(MINIMAL.replace("0.5", "'${T}'"), environ={"T": "0.5"})
    assert problems == [
        "support.yaml: llm_config.temperature: expected a number (got '0.5'); ${VAR} values are always text, "
        "so write numbers and true/false in the YAML itself"
    ]


def test_keys_are_not_interpolated():
    _, warnings = load(MINIMAL + "'${X}': 1\n", environ={"X": "description"})
    assert [w.field for w in warnings] == ["${X}"]


# --- YAML safety -------------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = [MINIMAL, 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_file_is_refused_fast():
    started = time.perf_counter()
    problems = problems_of(billion_laughs())
    assert time.perf_counter() - started < 1.0
    assert problems == ["support.yaml: the YAML expands to more than 100000 values (too many aliases?)"]


def test_a_few_aliases_are_fine():
    agent, _ = load(MINIMAL + "x-tags: &tags [a, b]\ntags: *tags\n")
    assert agent.tags == ["a", "b"]


def test_a_recursive_alias_is_refused():
    assert problems_of(MINIMAL + "tags: &t [a, *t]\n") == [
        "support.yaml: an alias refers to a node that contains it (recursive data is not allowed)"
    ]


@pytest.mark.parametrize(
    "nested",
    [
        "tags: " + "[" * 100_000 + "]" * 100_000,  # PyYAML's scanner is quadratic in flow depth
        "tags: " + "{a: " * 10_000 + "}" * 10_000,
        "tags:\n" + "".join(" " * i + "- \n" for i in range(100)),
    ],
    ids=["flow-lists", "flow-mappings", "block"],
)
def test_deep_nesting_is_refused_fast(nested: str):
    started = time.perf_counter()
    problems = problems_of(MINIMAL + nested + "\n")
    assert time.perf_counter() - started < 1.0
    assert problems == ["support.yaml: the YAML is nested more than 64 levels deep"]


def test_python_tags_are_refused_by_the_safe_loader():
    problems = problems_of(MINIMAL + "description: !!python/object/apply:os.system ['true']\n")
    assert len(problems) == 1 and "could not determine a constructor" in problems[0]


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch):
    path = write(tmp_path, "big.yaml", MINIMAL + "description: '" + "x" * 2000 + "'\n")
    monkeypatch.setattr(Path, "open", lambda *a, **k: pytest.fail("the file was opened"))
    with pytest.raises(AgentConfigError) as caught:
        load_agent_file(path, options(max_file_bytes=1024), make_registry(), filename="big.yaml")
    assert str(caught.value) == f"big.yaml: the file is too large ({path.stat().st_size} bytes; the limit is 1024)"


def test_oversized_text_is_refused():
    assert problems_of(MINIMAL + "description: '" + "x" * 300_000 + "'\n")[0].startswith(
        "support.yaml: the file is too large ("
    )


def test_more_than_one_document_is_an_error():
    problems = problems_of(MINIMAL + "---\n" + MINIMAL)
    assert problems == [
        "support.yaml: invalid YAML at line 7, column 1: but found another document (expected a single document "
        "in the stream)"
    ]


def test_a_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "latin.yaml"
    text = MINIMAL.replace("You help.", "Caf\xe9")
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(AgentConfigError) as caught:
        load_agent_file(path, options(), make_registry(), filename="latin.yaml")
    assert str(caught.value) == f"latin.yaml: not UTF-8 text (byte 0xe9 at offset {text.index(chr(0xe9))})"


def test_a_utf8_bom_is_accepted(tmp_path: Path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    agent, _ = load_agent_file(path, options(), make_registry())
    assert agent.name == "support" and agent.source_file == path


# --- Directories ------------------------------------------------------------------------------------------------


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path):
    write(tmp_path, "a.yaml", agent_yaml("alpha"))
    write(tmp_path, "b.yaml", agent_yaml("beta").replace("assistant", "wizard"))
    write(tmp_path, "c.yml", agent_yaml("gamma"))
    write(tmp_path, "d.yaml", "name: [unclosed\n")
    result = load_agents(tmp_path, options(), make_registry())
    assert sorted(result.agents) == ["alpha", "gamma"]
    assert [problem.file for problem in result.errors] == ["b.yaml", "d.yaml"]
    assert result.files == {"alpha": tmp_path / "a.yaml", "gamma": tmp_path / "c.yml"}
    assert result.agents["gamma"].source_file == tmp_path / "c.yml"


def test_a_duplicate_name_is_an_error_on_the_second_file(tmp_path: Path):
    write(tmp_path, "a.yaml", agent_yaml("support"))
    write(tmp_path, "sub/b.yaml", agent_yaml("support"))
    result = load_agents(tmp_path, options(), make_registry())
    assert result.files == {"support": tmp_path / "a.yaml"}
    assert [str(p) for p in result.errors] == ["sub/b.yaml: name: duplicate agent name 'support': already defined "
                                               "in a.yaml"]


def test_which_files_are_agent_files(tmp_path: Path):
    for name in ("b.yaml", "a.yml", "C.YAML", ".hidden.yaml", ".#lock.yaml", "~a.yaml", "#a.yaml#", "a.yaml~",
                 "a.yaml.swp", "notes.txt", ".git/x.yaml", "sub/d.yaml", "sub/.cache/e.yaml"):
        write(tmp_path, name, "x: 1\n")
    found = [path.relative_to(tmp_path).as_posix() for path in agent_files(tmp_path)]
    assert found == ["C.YAML", "a.yml", "b.yaml", "sub/d.yaml"]
    assert [p.name for p in agent_files(tmp_path, recursive=False)] == ["C.YAML", "a.yml", "b.yaml"]


def test_a_missing_directory_is_an_error(tmp_path: Path):
    result = load_agents(tmp_path / "nope", options(), make_registry())
    assert [str(p) for p in result.errors] == [f"{tmp_path / 'nope'}: agents directory not found"]


def test_warnings_of_all_files_are_collected(tmp_path: Path):
    write(tmp_path, "a.yaml", agent_yaml("alpha", extra="colour: red\n"))
    write(tmp_path, "b.yaml", agent_yaml("beta", extra="colour: blue\nagent_type: nope\n").replace(
        "agent_type: assistant\n", ""))
    result = load_agents(tmp_path, options(), make_registry())
    assert [str(p) for p in result.warnings] == ["a.yaml: colour: unknown field", "b.yaml: colour: unknown field"]


# --- References between agents --------------------------------------------------------------------------------


def collaborative(name: str, *collaborators: str) -> str:
    listed = ", ".join(collaborators)
    return agent_yaml(name, "collaborative", f"collaborative_config:\n  preferred_collaborators: [{listed}]\n")


def test_an_unknown_collaborator_is_an_error_on_that_agent(tmp_path: Path):
    write(tmp_path, "lead.yaml", collaborative("lead", "writer", "ghost"))
    write(tmp_path, "writer.yaml", agent_yaml("writer"))
    result = load_agents(tmp_path, options(), make_registry())
    assert [str(p) for p in result.errors] == [
        "lead.yaml: collaborative_config.preferred_collaborators[1]: unknown agent 'ghost' (no agent file defines it)"
    ]
    assert sorted(result.agents) == ["writer"]
    assert result.failed == {"lead": tmp_path / "lead.yaml"}


def test_a_collaborator_whose_file_fails_is_named_as_such(tmp_path: Path):
    write(tmp_path, "lead.yaml", collaborative("lead", "writer"))
    write(tmp_path, "writer.yaml", agent_yaml("writer").replace("assistant", "poet"))
    result = load_agents(tmp_path, options(), make_registry())
    assert "lead.yaml: collaborative_config.preferred_collaborators[0]: agent 'writer' is not loaded: writer.yaml " \
           "has errors" in [str(p) for p in result.errors]


def test_reference_errors_cascade_and_the_check_is_idempotent(tmp_path: Path):
    write(tmp_path, "top.yaml", collaborative("top", "middle"))
    write(tmp_path, "middle.yaml", collaborative("middle", "ghost"))
    write(tmp_path, "self.yaml", collaborative("selfish", "selfish"))
    result = load_agents(tmp_path, options(), make_registry())
    messages = [str(p) for p in result.errors]
    assert messages == [
        "middle.yaml: collaborative_config.preferred_collaborators[0]: unknown agent 'ghost' "
        "(no agent file defines it)",
        "self.yaml: collaborative_config.preferred_collaborators[0]: an agent cannot be its own collaborator",
        "top.yaml: collaborative_config.preferred_collaborators[0]: agent 'middle' is not loaded: middle.yaml has "
        "errors",
    ]
    assert result.agents == {}
    validate_agent_references(result)
    assert [str(p) for p in result.errors] == messages


# --- Options ---------------------------------------------------------------------------------------------------


def test_options_from_settings():
    settings = types.SimpleNamespace(
        config_strict_mode=True, default_llm_provider="openai", default_llm_model="gpt-4", task_max_retries=4,
        task_retry_delay=2, state_history_limit=50, state_save_interval=30, state_idle_timeout=600,
        scheduler_timezone="Europe/Paris",
    )
    built = LoaderOptions.from_settings(settings)
    assert (built.strict, built.default_provider, built.default_model) == (True, "openai", "gpt-4")
    assert (built.default_max_retries, built.default_retry_delay) == (4, 2)
    assert built.section_defaults == {
        "continuous_config": {"idle_timeout_seconds": 600, "save_interval_seconds": 30, "max_conversation_history": 50},
        "schedule_config": {"timezone": "Europe/Paris"},
    }
    assert built.environ is os.environ


def test_options_from_incomplete_settings_keep_the_defaults():
    built = LoaderOptions.from_settings(object(), environ={"A": "1"})
    assert built == LoaderOptions(section_defaults=built.section_defaults, environ={"A": "1"})
    assert built.section_defaults["schedule_config"] == {"timezone": "UTC"}
    assert "environ" not in repr(built)


def test_an_optional_field_written_as_null_is_not_set():
    agent, warnings = load(MINIMAL.replace("temperature: 0.5", "temperature: 0.5\n  endpoint_url: null\n  seed: null"))
    assert agent.llm_config.endpoint_url is None and agent.llm_config.seed is None
    assert "endpoint_url" not in agent.llm_config.explicit_fields and warnings == []
