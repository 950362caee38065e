"""``python -m agentrunner`` runs the command line."""

from agentrunner.cli import main

main()
