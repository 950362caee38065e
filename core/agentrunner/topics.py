"""Topic routing with exactly the matching rules of a RabbitMQ (AMQP 0-9-1) topic exchange.

A routing key and a binding pattern are both split into *words* on ``.``:

* ``*`` (as a whole word) matches exactly one word;
* ``#`` (as a whole word) matches zero or more words;
* any other word, including one that merely contains ``*`` or ``#`` (``a*``, ``#b``),
  matches only an identical word;
* empty words are words: ``"a..b"`` has three words (the middle one empty), ``"a."`` has two;
* the empty string has **no** words at all (RabbitMQ's ``split_topic_key(<<>>)`` is ``[]``),
  so the empty routing key is matched by ``""``, ``"#"``, ``"#.#"`` … but not by ``"*"``,
  and the empty pattern matches only the empty routing key.

These results were checked against a live RabbitMQ broker (see ``tests/test_topics_rabbitmq.py``).
The module is pure Python (stdlib only) and has no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["MAX_PATTERN_BYTES", "TopicTrie", "split_words", "topic_matches", "validate_pattern"]

#: An AMQP 0-9-1 ``shortstr`` (routing key, binding key) holds at most 255 bytes.
MAX_PATTERN_BYTES = 255

_STAR = "*"
_HASH = "#"


def split_words(key: str) -> list[str]:
    """Split a routing key or pattern into words the way RabbitMQ does.

    ``""`` gives ``[]`` (no words); otherwise every ``.`` separates two words, empty ones included:
    ``"a..b"`` gives ``["a", "", "b"]`` and ``"a."`` gives ``["a", ""]``.
    """
    return key.split(".") if key else []


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Return True when ``routing_key`` matches the binding ``pattern`` of a topic exchange.

    Runs in O(len(pattern words) x len(key words)) time whatever the wildcards (a simulation of the
    pattern as a non-deterministic automaton, so ``#.#.#.#.a`` cannot cause backtracking blow-ups).
    """
    pat = split_words(pattern)
    size = len(pat)

    def closure(positions: set[int]) -> set[int]:
        # A ``#`` may match zero words: being in front of it also means being just after it.
        todo = list(positions)
        while todo:
            pos = todo.pop()
            if pos < size and pat[pos] == _HASH and pos + 1 not in positions:
                positions.add(pos + 1)
                todo.append(pos + 1)
        return positions

    states = closure({0})
    for word in split_words(routing_key):
        following: set[int] = set()
        for pos in states:
            if pos == size:
                continue
            pword = pat[pos]
            if pword == _HASH:
                following.add(pos)  # ``#`` swallows this word and may swallow more
            elif pword == _STAR or pword == word:
                following.add(pos + 1)
        if not following:
            return False
        states = closure(following)
    return size in states


def validate_pattern(pattern: str) -> str | None:
    """Return a human-readable reason why ``pattern`` cannot be an AMQP binding key, or None if it can.

    AMQP 0-9-1 carries binding and routing keys as ``shortstr``: at most 255 bytes once encoded as
    UTF-8. Every other string is a valid topic pattern (``*`` and ``#`` inside a longer word are
    simply literal characters).
    """
    if not isinstance(pattern, str):
        return f"a topic pattern must be a string, not {type(pattern).__name__}"
    try:
        size = len(pattern.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"topic pattern {pattern!r} is not valid Unicode text ({exc.reason})"
    if size > MAX_PATTERN_BYTES:
        return (
            f"topic pattern is {size} bytes long in UTF-8; AMQP allows at most {MAX_PATTERN_BYTES} "
            f"(pattern starts with {pattern[:40]!r})"
        )
    return None


class _Node:
    """One trie node: the edges by pattern word and the values bound at this exact pattern."""

    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.values: set[Any] = set()


class TopicTrie:
    """Many bound patterns, matched against one routing key at a time, like a topic exchange.

    Each binding is a ``(pattern, value)`` pair; ``value`` must be hashable (a queue name, a
    subscription id, a callback …). Binding the same pair twice is a no-op, as in RabbitMQ.
    ``match`` walks the trie once, remembering which (node, word position) states it has already
    visited, so its cost is bounded by trie size x key length even for patterns such as
    ``#.#.#.#.#.a`` which make naive backtracking exponential. Not thread-safe; use it from one
    thread (or one event loop) or guard it with a lock.
    """

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        """Create an empty trie."""
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        """Number of distinct (pattern, value) bindings."""
        return self._count

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """Yield every binding as a ``(pattern, value)`` pair (in no particular order)."""
        stack: list[tuple[_Node, tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, words = stack.pop()
            pattern = ".".join(words)
            for value in node.values:
                yield pattern, value
            for word, child in node.children.items():
                stack.append((child, (*words, word)))

    def add(self, pattern: str, value: Hashable) -> bool:
        """Bind ``value`` under ``pattern``; return False if exactly this binding already existed."""
        node = self._root
        for word in split_words(pattern):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node()
            node = child
        if value in node.values:
            return False
        node.values.add(value)
        self._count += 1
        return True

    def remove(self, pattern: str, value: Hashable) -> bool:
        """Unbind ``value`` from ``pattern``; return False (and change nothing) if it was not bound.

        Nodes left without bindings or children are pruned, so the trie does not grow with churn.
        """
        path: list[tuple[_Node, str]] = []
        node = self._root
        for word in split_words(pattern):
            child = node.children.get(word)
            if child is None:
                return False
            path.append((node, word))
            node = child
        if value not in node.values:
            return False
        node.values.discard(value)
        self._count -= 1
        for parent, word in reversed(path):
            if node.values or node.children:
                break
            del parent.children[word]
            node = parent
        return True

    def match(self, routing_key: str) -> set[Any]:
        """Return the set of values whose pattern matches ``routing_key`` (each value once)."""
        words = split_words(routing_key)
        end = len(words)
        found: set[Any] = set()
        # A state is (node, index of the next key word, skipping); ``skipping`` means we stand just
        # after a ``#`` edge and may still let it swallow the word at ``index``.
        seen: set[tuple[_Node, int, bool]] = set()
        stack: list[tuple[_Node, int, bool]] = [(self._root, 0, False)]
        while stack:
            node, index, skipping = stack.pop()
            state = (node, index, skipping)
            if state in seen:
                continue
            seen.add(state)
            children = node.children
            if skipping:
                # ``#`` matches zero more words (continue matching here) or one more (and maybe more).
                stack.append((node, index, False))
                if index < end:
                    stack.append((node, index + 1, True))
                continue
            if index == end:
                found |= node.values
            else:
                word = words[index]
                child = children.get(word)
                if child is not None:
                    stack.append((child, index + 1, False))
                if word != _STAR:
                    child = children.get(_STAR)
                    if child is not None:
                        stack.append((child, index + 1, False))
            child = children.get(_HASH)
            if child is not None:
                stack.append((child, index, True))
        return found
