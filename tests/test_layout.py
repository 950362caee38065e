"""The repository keeps the shape DESIGN.md gives it."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = sorted(p for p in (REPO / "plugins").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_pyproject_only_names_the_build_backend():
    text = (REPO / "pyproject.toml").read_text()
    assert "[build-system]" in text and "[project]" not in text and "[tool." not in text


def test_the_core_distribution_is_built_from_core():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["name"] == "agentrunner"
    assert cfg["options"]["package_dir"].split() == ["=", "core"]
    assert "agentrunner = agentrunner.cli:main" in cfg["options.entry_points"]["console_scripts"]


def test_each_plugin_folder_is_a_complete_distribution_that_tox_installs():
    requirements = (REPO / "requirements-dev.txt").read_text()
    for plugin in PLUGIN_DIRS:
        for required in ("setup.cfg", "pyproject.toml", "README.md", "tests"):
            assert (plugin / required).exists(), f"{plugin.name} has no {required}"
        cfg = configparser.ConfigParser()
        cfg.read(plugin / "setup.cfg")
        assert cfg["metadata"]["name"] == plugin.name
        assert "agentrunner" in cfg["options.entry_points"], f"{plugin.name} declares no agentrunner entry point"
        assert f"-e plugins/{plugin.name}[test]" in requirements, f"{plugin.name} is not in requirements-dev.txt"


def test_there_is_one_example_agent_per_execution_mode():
    text = "\n".join(p.read_text() for p in (REPO / "config" / "agents").glob("*.yaml"))
    for mode in ("autonomous", "continuous", "collaborative", "scheduled"):
        assert f"execution_mode: {mode}" in text


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "pip install tox && tox" in readme
    assert "python -m tox" in (REPO / ".ci" / "run").read_text()
