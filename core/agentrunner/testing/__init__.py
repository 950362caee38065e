"""Contract test suites a backend plugin runs against its real service (devpi style).

Each suite is a class of pytest tests that needs one fixture; a backend's tests
subclass it (with a ``Test`` name, so pytest collects it) and provide the
fixture, and the whole contract runs against that backend::

    import pytest
    from agentrunner.testing.store_contract import StateStoreContract

    class TestPostgresStateStore(StateStoreContract):
        @pytest.fixture
        async def store(self, postgres_settings):
            store = PostgresStateStore(postgres_settings)
            await store.start()
            yield store
            await store.stop()

- ``agentrunner.testing.bus_contract.EventBusContract`` — fixture ``bus``
- ``agentrunner.testing.store_contract.StateStoreContract`` — fixture ``store``
- ``agentrunner.testing.cache_contract.CacheContract`` — fixture ``cache``

The fixtures yield a started backend and tear it down. The tests are async: run
them with pytest-asyncio (``asyncio_mode = auto``, or the marker they carry).
The suites use unique names, so they do not need an empty backend, and assume
nothing about the backend beyond ``agentrunner.interfaces``. Importing these
modules needs pytest, which ``agentrunner`` itself never imports.

The pytest plugin ``agentrunner.testing.pytest_plugin`` (loaded by pytest through the
``pytest11`` entry point) adds ``require_service`` — skip when a service is missing, fail
under ``CI=true`` — and the ``agentrunner_platform`` / ``agentrunner_http`` fixtures.
"""
