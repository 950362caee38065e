"""The contract every cache backend meets (``agentrunner.interfaces.Cache``).

Subclass ``CacheContract`` in a ``Test…`` class and provide a ``cache`` fixture
that yields a started cache (see ``agentrunner.testing``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentrunner.records import new_id


def _key(label: str = "k") -> str:
    return f"contract:{label}:{new_id()}"


class CacheContract:
    """Tests every cache backend passes; the subclass provides the ``cache`` fixture."""

    pytestmark = pytest.mark.asyncio

    async def test_health_passes_when_started(self, cache: Any) -> None:
        await cache.health()

    async def test_a_missing_key_is_none(self, cache: Any) -> None:
        assert await cache.get(_key()) is None

    async def test_set_then_get(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, {"answer": 42})
        assert await cache.get(key) == {"answer": 42}

    async def test_set_overwrites(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, "first")
        await cache.set(key, ["second"])
        assert await cache.get(key) == ["second"]

    async def test_delete(self, cache: Any) -> None:
        key, other = _key(), _key()
        await cache.set(key, 1)
        await cache.set(other, 2)
        await cache.delete(key)
        assert await cache.get(key) is None
        assert await cache.get(other) == 2
        await cache.delete(key)  # deleting a missing key is not an error
        await cache.delete(_key())

    async def test_a_key_expires_after_its_ttl(self, cache: Any) -> None:
        short, long, forever = _key("short"), _key("long"), _key("forever")
        await cache.set(short, "gone soon", ttl=0.05)
        await cache.set(long, "stays", ttl=30)
        await cache.set(forever, "stays too", ttl=None)
        await asyncio.sleep(0.25)
        assert await cache.get(short) is None
        assert await cache.get(long) == "stays"
        assert await cache.get(forever) == "stays too"

    async def test_a_value_is_there_before_its_ttl(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, {"fresh": True}, ttl=5)
        assert await cache.get(key) == {"fresh": True}

    async def test_setting_without_a_ttl_clears_the_previous_ttl(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, "v1", ttl=0.05)
        await cache.set(key, "v2")
        await asyncio.sleep(0.2)
        assert await cache.get(key) == "v2"

    async def test_setting_a_new_ttl_replaces_the_old_one(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, "v1", ttl=30)
        await cache.set(key, "v2", ttl=0.05)
        await asyncio.sleep(0.25)
        assert await cache.get(key) is None

    @pytest.mark.parametrize(
        "value",
        [
            "plain text",
            "ünïcødé ✓ 🚀 日本語",
            0,
            -17,
            2**53,
            3.25,
            True,
            False,
            [],
            {},
            [1, "two", 3.0, None, {"four": [4]}],
            {"nested": {"deeper": {"list": [1, 2, {"x": "ÿ"}]}, "flag": False, "none": None}, "emoji": "🙂"},
        ],
    )
    async def test_json_values_round_trip(self, cache: Any, value: Any) -> None:
        key = _key()
        await cache.set(key, value)
        got = await cache.get(key)
        assert got == value
        assert type(got) is type(value)

    async def test_changing_a_returned_value_does_not_change_the_cache(self, cache: Any) -> None:
        key = _key()
        await cache.set(key, {"items": [1, 2], "meta": {"n": 1}})
        got = await cache.get(key)
        got["items"].append(3)
        got["meta"]["n"] = 99
        got["new"] = True
        assert await cache.get(key) == {"items": [1, 2], "meta": {"n": 1}}

    async def test_changing_a_value_after_set_does_not_change_the_cache(self, cache: Any) -> None:
        key = _key()
        value = {"items": [1, 2], "meta": {"n": 1}}
        await cache.set(key, value)
        value["items"].append(3)
        value["meta"]["n"] = 99
        assert await cache.get(key) == {"items": [1, 2], "meta": {"n": 1}}

    async def test_keys_are_independent(self, cache: Any) -> None:
        prefix = _key("many")
        keys = [f"{prefix}:{i}" for i in range(20)] + [f"{prefix}:ключ", f"{prefix}:with space", f"{prefix}:a:b:c"]
        for index, key in enumerate(keys):
            await cache.set(key, {"index": index})
        assert [await cache.get(key) for key in keys] == [{"index": i} for i in range(len(keys))]

    async def test_concurrent_sets_and_gets(self, cache: Any) -> None:
        prefix = _key("concurrent")

        async def one(i: int) -> Any:
            await cache.set(f"{prefix}:{i}", {"i": i}, ttl=60)
            return await cache.get(f"{prefix}:{i}")

        results = await asyncio.gather(*(one(i) for i in range(100)))
        assert results == [{"i": i} for i in range(100)]
