"""The deployment files in contrib/ use real commands and real settings."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click
import pytest
import yaml

from agentrunner.cli import cli
from agentrunner.settings import VARIABLES

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"


def parse_command(args: list[str]) -> None:
    """Parse ``agentrunner ARGS`` as the CLI would, without running it (unknown options raise)."""
    group: click.Command = cli
    while isinstance(group, click.Group) and args and not args[0].startswith("-"):
        name, args = args[0], args[1:]
        command = group.get_command(click.Context(group), name)
        assert command is not None, f"agentrunner has no command {name!r}"
        group = command
    group.make_context("agentrunner", list(args), resilient_parsing=False)


def test_compose_services_use_known_settings_and_commands():
    compose = yaml.safe_load((CONTRIB / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"serve", "worker", "postgres", "redis", "rabbitmq"} <= set(services)
    for name in ("serve", "worker"):
        service = services[name]
        parse_command(service["command"])
        unknown = set(service["environment"]) - set(VARIABLES)
        assert not unknown, f"{name}: {unknown} are not agentrunner settings"
        assert service["environment"]["ENVIRONMENT"] == "production"
        assert service["environment"]["API_AUTH_ENABLED"] == "true"
    assert services["worker"]["deploy"]["replicas"] >= 2
    for port in services["serve"]["ports"]:
        assert port.startswith("127.0.0.1:")  # published on the host's loopback only


@pytest.mark.parametrize("unit", sorted(p.name for p in (CONTRIB / "systemd").glob("*.service")))
def test_systemd_units_run_real_commands(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(CONTRIB / "systemd" / unit)
    service = parser["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        if key in service:
            program, *args = shlex.split(service[key])
            assert program.endswith("/agentrunner")
            parse_command(args)
    for assignment in service.get("Environment", "").split():
        assert assignment.split("=", 1)[0] in VARIABLES


def test_the_maintenance_timer_starts_the_maintenance_service():
    parser = configparser.ConfigParser()
    parser.read(CONTRIB / "systemd" / "agentrunner-maintenance.timer")
    assert parser["Timer"]["OnCalendar"] and parser["Install"]["WantedBy"] == "timers.target"
    assert (CONTRIB / "systemd" / "agentrunner-maintenance.service").exists()


def test_the_image_installs_plugins_that_exist():
    dockerfile = (CONTRIB / "Dockerfile").read_text()
    plugins = Path(__file__).resolve().parents[1] / "plugins"
    named = {word.rsplit("/", 1)[-1] for word in dockerfile.split() if "/src/plugins/" in word}
    assert named and all((plugins / name).is_dir() for name in named)


def test_the_dashboard_charts_metrics_that_exist():
    import json
    import re

    from agentrunner.metrics import Metrics

    exported = {metric.name for metric in Metrics().registry.collect()}
    dashboard = json.loads((CONTRIB / "monitoring" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"agentrunner_\w+", target["expr"])}
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in exported, f"the dashboard uses {name}, which agentrunner does not export"
    scrape = yaml.safe_load((CONTRIB / "monitoring" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
