"""Manifests, version ids and change-sets: pure functions on values, no I/O.

The canonical manifest of a version is one line per file, sorted by the UTF-8 bytes of the
path: the compact JSON array ``["path",size,"hash"]`` followed by ``\\n``. The version id is
the XXH3-128 of those bytes, so two hosts holding the same files compute the same id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import xxhash

from schemas.events import FileChange


@dataclass(frozen=True, slots=True)
class FileState:
    """What the catalog knows of one file: its content and the stat that vouches for it."""

    size: int
    hash: str
    mtime_ns: int = 0
    inode: int = 0
    etag: str = ""  # an object's ETag (buckets); "" for local files

    def stat_matches(self, size: int, mtime_ns: int, inode: int, etag: str = "") -> bool:
        """True when a fresh stat proves the bytes are unchanged, so they need not be re-read."""
        return self.size == size and self.mtime_ns == mtime_ns and self.inode == inode and self.etag == etag


Manifest = Mapping[str, FileState]


def _sort_key(path: str) -> bytes:
    return path.encode("utf-8")


def canonical_manifest(entries: Iterable[tuple[str, int, str]]) -> bytes:
    """The canonical bytes of a manifest given (path, size, hash) triples in any order."""
    lines = [
        json.dumps([path, size, digest], ensure_ascii=False, separators=(",", ":"))
        for path, size, digest in sorted(entries, key=lambda e: _sort_key(e[0]))
    ]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def version_id(manifest: Manifest) -> str:
    """Content address of a manifest: XXH3-128 of its canonical bytes."""
    data = canonical_manifest((path, st.size, st.hash) for path, st in manifest.items())
    return xxhash.xxh3_128_hexdigest(data)


def diff(old: Manifest, new: Manifest) -> list[FileChange]:
    """Changes that turn ``old`` into ``new``, sorted by path. Stat-only differences are not changes."""
    changes: list[FileChange] = []
    for path in sorted(old.keys() | new.keys(), key=_sort_key):
        before, after = old.get(path), new.get(path)
        if before is None and after is not None:
            changes.append(FileChange(path=path, change="added", size=after.size, new_hash=after.hash))
        elif after is None and before is not None:
            changes.append(FileChange(path=path, change="removed", old_size=before.size, old_hash=before.hash))
        elif before is not None and after is not None and (before.hash, before.size) != (after.hash, after.size):
            changes.append(
                FileChange(
                    path=path,
                    change="modified",
                    size=after.size,
                    old_size=before.size,
                    new_hash=after.hash,
                    old_hash=before.hash,
                )
            )
    return changes
