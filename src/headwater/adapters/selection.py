"""Which listed paths a source hands on: include/exclude globs over ``/``-separated paths.

One rule for every source (a folder, a bucket prefix, a list of URLs), so the same tree gives the
same documents wherever it lives: a path is selected when an include pattern matches it and no
exclude pattern matches it or one of its folders (``folder/`` is matched with its slash).
"""

from __future__ import annotations

import re


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob once: ``**/`` spans folders (or none), ``*`` and ``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


class Globs:
    """Patterns as one alternation: one regex call per path, however many patterns."""

    def __init__(self, patterns: list[str]) -> None:
        self.regex = re.compile("|".join(f"(?:{glob_to_regex(p).pattern})" for p in patterns), re.DOTALL)
        self.empty = not patterns
        self.everything = "**/*" in patterns or "**" in patterns  # the default include

    def match(self, relpath: str) -> bool:
        return self.everything or (not self.empty and self.regex.fullmatch(relpath) is not None)


class Selection:
    """Include and exclude together; ``include=None`` means everything."""

    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        self.include = Globs(include or ["**/*"])
        self.exclude = Globs(exclude or [])

    def selected(self, relpath: str) -> bool:
        """A whole path's verdict, its folders' excludes included (a walk that prunes excluded
        folders checks the file alone: ``include.match`` and ``exclude.match``)."""
        parts = relpath.split("/")
        if not relpath or ".." in parts or not self.include.match(relpath):
            return False
        if self.exclude.match(relpath):
            return False
        return not any(self.exclude.match("/".join(parts[: i + 1]) + "/") for i in range(len(parts) - 1))
