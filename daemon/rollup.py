"""A merge of many values kept up to date as they change: pure, no I/O.

``OrderedRollup`` holds keys in order, in the leaves of a B+tree whose every node caches the
merge of what lies below it. Changing a key re-merges only the nodes above it, so the merge of
100,000 values after 10 changes costs a few hundred merges instead of 100,000 (issue 5: a
version's profile is the merge of its files' profiles). The values themselves are not held:
a leaf asks ``load`` for its keys' values when it must be merged again, so memory holds one
summary per node, not one value per key.

While all keys fit in one leaf, the total is ``merge`` of every value in key order: exactly the
flat merge. With more keys it is a merge of merges, in key order; that equals the flat merge
when ``merge`` is associative (sums, counts, extremes, exact sets) and is as good an estimate
of it when it merges sketches.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

S = TypeVar("S")

# Keys per leaf and children per inner node: between FANOUT (after a split) and 2 * FANOUT.
# Small nodes make a change cheap (a leaf loads at most 2 * FANOUT values); the depth grows by
# one per factor of ~FANOUT * 1.5 keys.
FANOUT = 16


class _Node(Generic[S]):
    """A leaf (``children`` is None; ``keys`` are its keys) or an inner node (``keys[i]`` is the
    smallest key routed to ``children[i]``; ``keys[0]`` is never used to route)."""

    __slots__ = ("children", "fresh", "keys", "summary")

    def __init__(self, keys: list[str], children: list[_Node[S]] | None = None) -> None:
        self.keys = keys
        self.children = children
        self.summary: S | None = None
        self.fresh = False  # summary is the merge of what is below now

    def child_of(self, key: str) -> int:
        return max(bisect.bisect_right(self.keys, key) - 1, 0)


class OrderedRollup(Generic[S]):
    """Keys in order and the merge of their values, re-merged only where keys changed.

    ``merge`` takes the values (or merged values) of consecutive keys, in key order, and returns
    their merge; it is never called with an empty list.
    """

    def __init__(self, merge: Callable[[list[S]], S], keys: Iterable[str] = (), *, fanout: int = FANOUT) -> None:
        if fanout < 2:
            raise ValueError("fanout must be at least 2")
        self._merge = merge
        self._fanout = fanout
        self._keys = set(keys)
        self._root: _Node[S] = self._bulk(sorted(self._keys))

    def _bulk(self, keys: list[str]) -> _Node[S]:
        """A tree of ``keys`` (sorted), its nodes half full so that the next adds seldom split."""
        f = self._fanout
        level: list[_Node[S]] = [_Node(keys[i : i + f]) for i in range(0, len(keys), f)] or [_Node([])]
        while len(level) > 1:
            level = [_Node([n.keys[0] for n in level[i : i + f]], level[i : i + f]) for i in range(0, len(level), f)]
        return level[0]

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> Iterator[str]:
        """Every key, in order."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.children is None:
                yield from node.keys
            else:
                stack.extend(reversed(node.children))

    def add(self, key: str) -> None:
        """A new key (its value is loaded at the next ``total``)."""
        if key in self._keys:
            raise ValueError(f"{key!r} is already in the roll-up")
        self._keys.add(key)
        split = self._add(self._root, key)
        if split is not None:
            self._root = _Node(["", split.keys[0]], [self._root, split])

    def _add(self, node: _Node[S], key: str) -> _Node[S] | None:
        """Add below ``node``; the new right half of ``node`` when it had to split."""
        node.fresh = False
        if node.children is None:
            bisect.insort(node.keys, key)
        else:
            i = node.child_of(key)
            split = self._add(node.children[i], key)
            if split is None:
                return None
            node.children.insert(i + 1, split)
            node.keys.insert(i + 1, split.keys[0])
        if len(node.keys) <= 2 * self._fanout:
            return None
        half = len(node.keys) // 2
        right = _Node(node.keys[half:], None if node.children is None else node.children[half:])
        node.keys = node.keys[:half]
        if node.children is not None:
            node.children = node.children[:half]
        return right

    def remove(self, key: str) -> None:
        """Forget a key."""
        self._keys.remove(key)
        self._remove(self._root, key)
        while self._root.children is not None and len(self._root.children) == 1:
            self._root = self._root.children[0]
        if self._root.children is not None and not self._root.children:
            self._root = _Node([])

    def _remove(self, node: _Node[S], key: str) -> bool:
        """Remove below ``node``; True when ``node`` is left empty."""
        node.fresh = False
        if node.children is None:
            del node.keys[bisect.bisect_left(node.keys, key)]
            return not node.keys
        i = node.child_of(key)
        if self._remove(node.children[i], key):
            del node.children[i], node.keys[i]
        return not node.children

    def touch(self, key: str) -> None:
        """The value of ``key`` changed: its leaf and the nodes above are merged again at the next ``total``."""
        if key not in self._keys:
            raise KeyError(key)
        node = self._root
        while True:
            node.fresh = False
            if node.children is None:
                return
            node = node.children[node.child_of(key)]

    def total(self, load: Callable[[Sequence[str]], Sequence[S]]) -> S | None:
        """The merge of every key's value (None without keys). ``load`` gives the values of some
        keys, in their order; it is called once per leaf that changed since the last total."""
        if not self._keys:
            return None
        return self._summary(self._root, load)

    def _summary(self, node: _Node[S], load: Callable[[Sequence[str]], Sequence[S]]) -> S:
        if node.fresh:
            return node.summary  # type: ignore[return-value]
        if node.children is None:
            parts = list(load(node.keys))
            if len(parts) != len(node.keys):
                raise ValueError(f"load gave {len(parts)} values for {len(node.keys)} keys")
        else:
            parts = [self._summary(child, load) for child in node.children]
        # A lone child's summary is taken as it is: merging one value may not give it back unchanged.
        node.summary = parts[0] if node.children is not None and len(parts) == 1 else self._merge(parts)
        node.fresh = True
        return node.summary
