"""Default plugins: registered from inside the core exactly like external plugins.

Each module uses only the public hooks and interfaces (``agentrunner``,
``agentrunner.interfaces``, ``agentrunner.schema``), so it could move to its own
distribution unchanged.
"""
