"""Which paths belong to a dataset: default ignores plus the dataset's include/exclude globs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wcmatch import glob

from schemas.config import DatasetConfig

_FLAGS = glob.GLOBSTAR | glob.DOTGLOB | glob.NEGATE
_IGNORED_DIRS = frozenset(("_temporary", "__pycache__"))
_IGNORED_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".swp", ".swx", "~", "._COPYING_")


def _default_ignored(rel: str) -> bool:
    """The rules of schemas.config.DEFAULT_IGNORES: hidden parts, tool temp names and folders."""
    if rel.endswith(_IGNORED_SUFFIXES):
        return True
    if not (rel.startswith(".") or "/." in rel or "_temporary" in rel or "__pycache__" in rel):
        return False  # the common case, decided without splitting the path
    return any(part.startswith(".") or part in _IGNORED_DIRS for part in rel.split("/"))


@dataclass(frozen=True)
class PathFilter:
    """Decides for a POSIX path relative to the dataset root whether it is part of the data."""

    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()
    ignore_defaults: bool = True
    recursive: bool = True
    marker: str | None = None
    _matcher: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The default ignores (DEFAULT_IGNORES) are checked by plain string tests: wcmatch costs
        # ~25 us a path with them, which dominated a 20,000-file burst. Globs are compiled
        # only for what the user wrote.
        matcher = None
        if tuple(self.include) != ("**",) or self.exclude:
            matcher = glob.compile(list(self.include), flags=_FLAGS, exclude=list(self.exclude) or None)
        object.__setattr__(self, "_matcher", matcher)

    @classmethod
    def for_dataset(cls, ds: DatasetConfig) -> PathFilter:
        return cls(
            include=ds.include,
            exclude=ds.exclude,
            ignore_defaults=ds.ignore_defaults,
            recursive=ds.recursive,
            marker=ds.commit_marker,
        )

    def is_marker(self, rel: str) -> bool:
        return self.marker is not None and rel == self.marker

    def wants_file(self, rel: str) -> bool:
        """True when the file at ``rel`` is part of the dataset's manifest."""
        if not self.recursive and "/" in rel:
            return False
        if self.is_marker(rel):
            return False
        if self.ignore_defaults and _default_ignored(rel):
            return False
        return self._matcher is None or bool(self._matcher.match(rel))

    def wants_dir(self, rel: str) -> bool:
        """True when files below folder ``rel`` may belong to the dataset (prunes walks)."""
        if not self.recursive:
            return False
        if not self.ignore_defaults:
            return True
        name = rel.rsplit("/", 1)[-1]
        return not (name.startswith(".") or name in ("_temporary", "__pycache__"))
