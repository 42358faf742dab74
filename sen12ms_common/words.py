"""Counted words in messages: `1 preview page`, `3 preview pages`, `the 1 class absent`."""

from __future__ import annotations


def plural(word: str, count: int | None = None) -> str:
    """`word` for a count of one, else its plural (`patch` -> `patches`, `class` -> `classes`)."""
    if count == 1:
        return word
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def counted(count: int, word: str) -> str:
    """`1 page`, `2 pages`."""
    return f"{count} {plural(word, count)}"


__all__ = ["plural", "counted"]
