"""The one glob dialect of policies and tool allow-lists.

``*`` matches any run of characters, ``?`` one character, ``[abc]``, ``[a-z]``
and ``[!a-z]`` one character of (or not of) a class; everything else is
literal. It is fnmatch's syntax without fnmatch's leniency: an unclosed ``[``,
an empty class or a reversed range is an error here (fnmatch would silently
read it as literal text, which is never what a policy author meant).
"""

from __future__ import annotations

import fnmatch
import functools
import re


class GlobError(ValueError):
    """A pattern that does not compile; the message says where and why."""


def glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid glob, or None when it is."""
    if not pattern:
        return "is empty"
    i = 0
    while i < len(pattern):
        if pattern[i] != "[":
            i += 1
            continue
        body_start = i + 2 if pattern[i + 1 : i + 2] == "!" else i + 1
        # As fnmatch reads it: a "]" right after "[" or "[!" is a member, not the end.
        end = pattern.find(
            "]", body_start + 1 if pattern[body_start : body_start + 1] == "]" else body_start
        )
        if end == -1:
            return f"has an unclosed '[' at position {i}"
        body = pattern[body_start:end]
        if not body:
            return f"has an empty character class at position {i}"
        for low, high in re.findall(r"(.)-(.)", body):
            if low > high:
                return f"has a reversed range {low}-{high} at position {i}"
        i = end + 1
    return None


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    problem = glob_problem(pattern)
    if problem:
        raise GlobError(f"glob {pattern!r} {problem}")
    return re.compile(fnmatch.translate(pattern))


_WILDCARD = re.compile(r"[*?\[]")
MEMO = 65_536
"""Entries per memoised pure function below: policies and specs repeat few strings."""


def is_literal(pattern: str) -> bool:
    return _WILDCARD.search(pattern) is None


@functools.lru_cache(maxsize=MEMO)
def glob_match(name: str, pattern: str) -> bool:
    """Whether ``name`` matches ``pattern`` (case-sensitive; invalid patterns match nothing)."""
    if is_literal(pattern):
        return name == pattern
    try:
        return compile_glob(pattern).match(name) is not None
    except GlobError:
        return False


def any_match(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(glob_match(name, p) for p in patterns)


@functools.lru_cache(maxsize=MEMO)
def covers(pattern: str, entry: str) -> bool:
    """Whether every name ``entry`` stands for matches ``pattern``.

    ``entry`` is a tool name from an Agent's allow-list: a literal name, or a
    pattern with ``*`` (the runtime matches it as a glob, so ``github.*`` stands
    for every tool starting with ``github.`` and ``a*b`` for ``aXb``, ``aXYb``...).
    An entry with a wildcard is covered by the same pattern, by ``*``, or by a
    pattern ending in ``*`` whose head matches a prefix of the entry's literal
    start, so ``github.*`` covers ``github.issues.*`` but ``github.read`` covers
    nothing but itself, and only ``*`` covers ``*``.
    """
    if is_literal(entry):
        return glob_match(entry, pattern)
    if pattern in (entry, "*"):
        return True
    if not pattern.endswith("*"):
        return False
    # Every name the entry stands for starts with its text before the first wildcard.
    prefix = entry[: min(entry.index(c) for c in "*?[" if c in entry)]
    head = pattern[:-1]
    return any(glob_match(prefix[:cut], head) for cut in range(len(prefix), -1, -1))
