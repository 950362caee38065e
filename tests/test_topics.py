"""Topic routing: the matching rules of a RabbitMQ topic exchange, edge cases first.

Every row of EDGE_CASES is also replayed against a real broker by tests/test_topics_rabbitmq.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrunner.topics import MAX_PATTERN_BYTES, TopicTrie, split_words, topic_matches, validate_pattern

# (pattern, routing key, matches?)
EDGE_CASES: list[tuple[str, str, bool]] = [
    # plain words
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("a.b.c", "a.B.c", False),
    # ``*``: exactly one word
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("*.b", "b", False),
    ("*.*", "a.b", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    # ``#``: zero or more words
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y", False),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "b", True),
    ("#.b.#", "a.c", False),
    # adjacent and mixed wildcards
    ("#.#", "a", True),
    ("#.#", "a.b.c", True),
    ("a.#.#.b", "a.b", True),
    ("a.#.#.b", "a.x.b", True),
    ("a.#.#.b", "a.x.y.z.b", True),
    ("a.#.#.b", "a.x.y", False),
    ("*.#", "a", True),
    ("*.#", "a.b.c", True),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("#.*.#", "a", True),
    ("*.#.#", "a.b", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("#.*.*", "a", False),
    ("#.*.*", "a.b", True),
    # the empty routing key has NO words (RabbitMQ: split_topic_key(<<>>) = [])
    ("#", "", True),
    ("#.#", "", True),
    ("#.#.#", "", True),
    ("", "", True),
    ("*", "", False),
    ("*.#", "", False),
    ("#.*", "", False),
    ("#.*.#", "", False),
    ("a", "", False),
    ("a.#", "", False),
    # the empty pattern matches only the empty key
    ("", "a", False),
    ("", ".", False),
    # empty words are words
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
    ("a.#.b", "a..b", True),
    ("a.b", "a..b", False),
    ("a.", "a.", True),
    ("a.", "a", False),
    ("a", "a.", False),
    ("a.*", "a.", True),
    ("a.#", "a.", True),
    ("a.#", "a..b", True),
    (".a", ".a", True),
    ("#.a", ".a", True),
    ("*.a", ".a", True),
    (".", ".", True),
    ("*", ".", False),
    ("*.*", ".", True),
    ("#", ".", True),
    ("..", "..", True),
    ("*.*.*", "..", True),
    (".", "..", False),
    # ``*`` and ``#`` inside a longer word are literal characters
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("a*", "a", False),
    ("#b", "#b", True),
    ("#b", "b", False),
    ("#b", "a.b", False),
    ("*b", "*b", True),
    ("*b", "ab", False),
    ("a#", "a#", True),
    ("a#", "a.b", False),
    ("**", "a", False),
    ("##", "", False),
    ("##", "##", True),
    # wildcard characters in routing keys are just characters of a word
    ("*", "*", True),
    ("*", "#", True),
    ("#", "#", True),
    ("a", "*", False),
    ("#.a", "#.a", True),
    # case, non-ASCII and long keys
    ("slack.command.*", "slack.command.help", True),
    ("slack.#", "slack.event.message.posted", True),
    ("ünï.*", "ünï.cødé", True),
    ("ünï.*", "uni.code", False),
]


def reference_matches(pattern: str, routing_key: str) -> bool:
    """An independent, deliberately naive backtracking matcher (exponential, fine for tiny inputs)."""
    pat = [] if pattern == "" else pattern.split(".")
    key = [] if routing_key == "" else routing_key.split(".")

    def rec(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        head, rest = p[0], p[1:]
        if head == "#":
            return any(rec(rest, k[skip:]) for skip in range(len(k) + 1))
        if not k:
            return False
        if head == "*" or head == k[0]:
            return rec(rest, k[1:])
        return False

    return rec(pat, key)


@pytest.mark.parametrize(("pattern", "key", "expected"), EDGE_CASES, ids=[f"{p!r}~{k!r}" for p, k, _ in EDGE_CASES])
def test_edge_cases(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
    assert reference_matches(pattern, key) is expected
    trie = TopicTrie()
    trie.add(pattern, "v")
    assert trie.match(key) == ({"v"} if expected else set())


def test_split_words() -> None:
    assert split_words("") == []
    assert split_words("a") == ["a"]
    assert split_words("a..b") == ["a", "", "b"]
    assert split_words("a.") == ["a", ""]
    assert split_words(".") == ["", ""]


# rabbitmq-server's own topic routing test (deps/rabbit/test/routing_SUITE.erl, topic1): bindings,
# expected destinations per key, then the same after removing some bindings.
RABBIT_BINDINGS = [
    ("a.b.c", "t1"), ("a.*.c", "t2"), ("a.#.b", "t3"), ("a.b.b.c", "t4"), ("#", "t5"), ("#.#", "t6"),
    ("#.b", "t7"), ("*.*", "t8"), ("a.*", "t9"), ("*.b.c", "t10"), ("a.#", "t11"), ("a.#.#", "t12"),
    ("b.b.c", "t13"), ("a.b.b", "t14"), ("a.b", "t15"), ("b.c", "t16"), ("", "t17"), ("*.*.*", "t18"),
    ("vodka.martini", "t19"), ("a.b.c", "t20"), ("*.#", "t21"), ("#.*.#", "t22"), ("*.#.#", "t23"),
    ("#.#.#", "t24"), ("*", "t25"), ("#.b.#", "t26"), ("args-test", "t27"),
]  # fmt: skip
RABBIT_EXPECTED = {
    "a.b.c": "t1 t2 t5 t6 t10 t11 t12 t18 t20 t21 t22 t23 t24 t26",
    "a.b": "t3 t5 t6 t7 t8 t9 t11 t12 t15 t21 t22 t23 t24 t26",
    "a.b.b": "t3 t5 t6 t7 t11 t12 t14 t18 t21 t22 t23 t24 t26",
    "": "t5 t6 t17 t24",
    "b.c.c": "t5 t6 t18 t21 t22 t23 t24 t26",
    "a.a.a.a.a": "t5 t6 t11 t12 t21 t22 t23 t24",
    "vodka.gin": "t5 t6 t8 t21 t22 t23 t24",
    "vodka.martini": "t5 t6 t8 t19 t21 t22 t23 t24",
    "b.b.c": "t5 t6 t10 t13 t18 t21 t22 t23 t24 t26",
    "nothing.here.at.all": "t5 t6 t21 t22 t23 t24",
    "oneword": "t5 t6 t21 t22 t23 t24 t25",
    "args-test": "t5 t6 t21 t22 t23 t24 t25 t27",
}
RABBIT_REMOVED = [("a.b.c", "t1"), ("#", "t5"), ("a.#", "t11"), ("vodka.martini", "t19"), ("*.#", "t21")]
RABBIT_EXPECTED_AFTER_REMOVAL = {
    "a.b.c": "t2 t6 t10 t12 t18 t20 t22 t23 t24 t26",
    "a.b": "t3 t6 t7 t8 t9 t12 t15 t22 t23 t24 t26",
    "a.b.b": "t3 t6 t7 t12 t14 t18 t22 t23 t24 t26",
    "": "t6 t17 t24",
    "b.c.c": "t6 t18 t22 t23 t24 t26",
    "a.a.a.a.a": "t6 t12 t22 t23 t24",
    "vodka.gin": "t6 t8 t22 t23 t24",
    "vodka.martini": "t6 t8 t22 t23 t24",
    "b.b.c": "t6 t10 t13 t18 t22 t23 t24 t26",
    "nothing.here.at.all": "t6 t22 t23 t24",
    "oneword": "t6 t22 t23 t24 t25",
    "args-test": "t6 t22 t23 t24 t25 t27",
}


def test_rabbitmq_routing_suite() -> None:
    trie = TopicTrie()
    for pattern, queue in RABBIT_BINDINGS:
        assert trie.add(pattern, queue)
    assert len(trie) == len(RABBIT_BINDINGS)
    for key, expected in RABBIT_EXPECTED.items():
        assert trie.match(key) == set(expected.split()), key
        assert {q for p, q in RABBIT_BINDINGS if topic_matches(p, key)} == set(expected.split()), key
    for pattern, queue in RABBIT_REMOVED:
        assert trie.remove(pattern, queue)
    assert len(trie) == len(RABBIT_BINDINGS) - len(RABBIT_REMOVED)
    for key, expected in RABBIT_EXPECTED_AFTER_REMOVAL.items():
        assert trie.match(key) == set(expected.split()), key


def test_trie_add_remove_bookkeeping() -> None:
    trie = TopicTrie()
    assert trie.match("a.b") == set()
    assert trie.add("a.*", 1)
    assert not trie.add("a.*", 1)  # the same binding twice is one binding
    assert trie.add("a.*", 2)
    assert trie.add("a.#", 1)
    assert len(trie) == 3
    assert sorted(trie) == [("a.#", 1), ("a.*", 1), ("a.*", 2)]
    assert trie.match("a.b") == {1, 2}
    assert not trie.remove("a.*", 3)
    assert not trie.remove("a.b.c", 1)
    assert not trie.remove("", 1)
    assert trie.remove("a.*", 1)
    assert not trie.remove("a.*", 1)
    assert trie.match("a.b") == {1, 2}  # 1 still arrives through "a.#", once
    assert trie.remove("a.#", 1)
    assert trie.remove("a.*", 2)
    assert len(trie) == 0
    assert list(trie) == []
    assert trie._root.children == {}  # emptied nodes are pruned


def test_empty_pattern_binds_at_the_root() -> None:
    trie = TopicTrie()
    trie.add("", "empty")
    trie.add("#", "all")
    assert trie.match("") == {"empty", "all"}
    assert trie.match("a") == {"all"}
    assert sorted(trie) == [("", "empty"), ("#", "all")]


def test_many_hashes_cannot_blow_up() -> None:
    pattern = "#." * 20 + "x"
    hit = ".".join(["w"] * 29 + ["x"])
    miss = ".".join(["w"] * 29 + ["y"])
    assert topic_matches(pattern, hit)
    assert not topic_matches(pattern, miss)
    assert not topic_matches(pattern + ".x", ".".join(["x"] * 30 + ["y"]))
    trie = TopicTrie()
    for n in range(1, 40):
        trie.add("#." * n + "x", n)
        trie.add("#.*." * n + "x", -n)
    assert trie.match(hit) == set(range(1, 40)) | {-n for n in range(1, 30)}
    assert trie.match(miss) == set()


def test_hundreds_of_agent_bindings() -> None:
    trie = TopicTrie()
    for n in range(500):
        trie.add(f"continuous.task.agent{n}", f"agent{n}")
        trie.add(f"scheduled.task.agent{n}", f"agent{n}")
    trie.add("agent.#", "monitor")
    trie.add("*.task.*", "auditor")
    assert trie.match("continuous.task.agent42") == {"agent42", "auditor"}
    assert trie.match("agent.execution.failed") == {"monitor"}
    assert trie.match("autonomous.task.submitted") == {"auditor"}


def test_validate_pattern() -> None:
    assert validate_pattern("") is None
    assert validate_pattern("slack.command.*") is None
    assert validate_pattern("a*.#b") is None  # literal, but valid
    assert validate_pattern("x" * MAX_PATTERN_BYTES) is None
    reason = validate_pattern("x" * (MAX_PATTERN_BYTES + 1))
    assert reason is not None and "256 bytes" in reason and "255" in reason
    assert validate_pattern("é" * 127) is None  # 254 bytes
    reason = validate_pattern("é" * 128)  # 128 characters but 256 bytes
    assert reason is not None and "256 bytes" in reason
    assert validate_pattern("a.\ud800") is not None
    assert validate_pattern(42) is not None  # type: ignore[arg-type]


PATTERN_WORDS = st.sampled_from(["", "a", "b", "*", "#"])
KEY_WORDS = st.sampled_from(["", "a", "b", "c", "*", "#", "a*"])
patterns = st.lists(PATTERN_WORDS, max_size=7).map(".".join)
keys = st.lists(KEY_WORDS, max_size=7).map(".".join)


@settings(max_examples=1000, deadline=None)
@given(pattern=patterns, key=keys)
def test_matches_reference(pattern: str, key: str) -> None:
    expected = reference_matches(pattern, key)
    assert topic_matches(pattern, key) is expected
    trie = TopicTrie()
    trie.add(pattern, 0)
    assert trie.match(key) == ({0} if expected else set())


@settings(max_examples=200, deadline=None)
@given(bound=st.lists(patterns, max_size=25), probes=st.lists(keys, min_size=1, max_size=10), data=st.data())
def test_trie_matches_reference(bound: list[str], probes: list[str], data: st.DataObject) -> None:
    trie = TopicTrie()
    for index, pattern in enumerate(bound):
        trie.add(pattern, index)
    removed = data.draw(st.sets(st.sampled_from(range(len(bound)))) if bound else st.just(set()))
    for index in removed:
        assert trie.remove(bound[index], index)
    assert len(trie) == len(bound) - len(removed)
    for key in probes:
        expected = {i for i, p in enumerate(bound) if i not in removed and reference_matches(p, key)}
        assert trie.match(key) == expected
