"""The HTTP services: one aiohttp application per service, each on its own port."""
