"""Reading our JSON label file by its grammar alone: an object of header values and "labels", an
object of S2 file name -> list of numbers (or, without a header, that object alone). Nothing
deeper is parsed, so nesting is bounded; entries, names and numbers are counted and measured
before they are allocated. The grammar is in docs/datafiles.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .limits import MAX_ENTRIES, MAX_HEADER_ITEMS, MAX_NAME_CHARS, MAX_NUMBER_DIGITS, MAX_STRING_CHARS, excerpt

_D = MAX_NUMBER_DIGITS
_WS = re.compile(rb"[ \t\n\r]*")
# JSON's number, at most MAX_NUMBER_DIGITS digits per part.
_NUM = rb"-?(?:0|[1-9][0-9]{0,%d})(?:\.[0-9]{1,%d})?(?:[eE][+-]?[0-9]{1,5})?" % (_D - 1, _D)
_NUMBER = re.compile(_NUM)
# A string without escapes (a name), and the start of any string up to its first escape.
_PLAIN_STRING = re.compile(rb'"([^"\\\x00-\x1f]{0,%d})"' % MAX_STRING_CHARS)
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')  # bounded by the end position given to match
_ESCAPE = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
# What cannot follow a number: it would be longer than the pattern allows, or not a number.
_AFTER_NUMBER = frozenset(b"0123456789.eE+-"[i:i + 1] for i in range(15))
_LITERALS = {b"true": True, b"false": False, b"null": None}


@dataclass
class LabelDocument:
    """What the file holds: header values, and labels under "labels" or at the top level."""

    header: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, np.ndarray] | None = None
    bare: dict[str, np.ndarray] = field(default_factory=dict)
    not_labels: list[tuple[str, int]] = field(default_factory=list)  # keys that hold no vector, and where


class _Parser:
    def __init__(self, data: bytes, source: str, n_values: int) -> None:
        self.data, self.source, self.n = data, source, n_values
        sep = rb"[ \t\n\r]*,[ \t\n\r]*"
        # One label vector of exactly n numbers; the numbers are the captured text.
        self.vector = re.compile(rb"\[[ \t\n\r]*(" + _NUM + rb"(?:" + sep + _NUM + rb"){%d})[ \t\n\r]*\]"
                                 % (n_values - 1))
        self.entries = 0

    # --- errors ---------------------------------------------------------------------------------------
    def error(self, pos: int, problem: str) -> InputError:
        line = self.data.count(b"\n", 0, pos) + 1
        return InputError(f"{self.source}: line {line}: {problem}")

    def syntax(self, pos: int, expected: str) -> InputError:
        found = self.data[pos:pos + 40]
        where = f"found {excerpt(found.decode('utf-8', 'replace'), 30)}" if found else "found the end of the file"
        return self.error(pos, f"not valid JSON: expected {expected}, {where}")

    # --- tokens ---------------------------------------------------------------------------------------
    def skip(self, pos: int) -> int:
        return _WS.match(self.data, pos).end()

    def expect(self, pos: int, char: bytes, what: str) -> int:
        pos = self.skip(pos)
        if self.data[pos:pos + 1] != char:
            raise self.syntax(pos, what)
        return pos + 1

    def string(self, pos: int, limit: int, what: str) -> tuple[str, int]:
        """The string at `pos` (after white space) and the position after it."""
        pos = self.skip(pos)
        m = _PLAIN_STRING.match(self.data, pos)
        end = m.end() if m else self._escaped_end(pos, limit, what)
        try:
            # Without escapes (every name our writer writes) the bytes are the text.
            text = m.group(1).decode("utf-8") if m else json.loads(self.data[pos:end])
        except (UnicodeDecodeError, ValueError):
            raise self.error(pos, f"{what} is not UTF-8 text") from None
        if len(text) > limit:
            raise self.error(pos, f"{what} {excerpt(text)} is longer than {limit} characters")
        return text, end

    def _escaped_end(self, pos: int, limit: int, what: str) -> int:
        """The end of a string with escapes, scanning at most about `limit` characters."""
        if self.data[pos:pos + 1] != b'"':
            raise self.syntax(pos, what)
        p, budget = pos + 1, limit
        while True:
            run_end = _STRING_RUN.match(self.data, p, p + budget + 1).end()
            budget -= run_end - p
            p = run_end
            if budget < 0:
                raise self.error(pos, f"{what} is longer than {limit} characters")
            char = self.data[p:p + 1]
            if char == b'"':
                return p + 1
            escape = _ESCAPE.match(self.data, p)
            if not escape:
                problem = "the file ends inside a string" if not char else "a control character or a bad escape"
                raise self.error(p, f"not valid JSON: {problem} in {what}")
            p, budget = escape.end(), budget - 1

    def number(self, pos: int) -> tuple[int | float, int]:
        m = _NUMBER.match(self.data, pos)
        if not m or self.data[m.end():m.end() + 1] in _AFTER_NUMBER:
            raise self.syntax(pos, f"a number (of at most {_D} digits per part)")
        text = m.group()
        return (float(text) if any(c in text for c in b".eE") else int(text)), m.end()

    # --- values ---------------------------------------------------------------------------------------
    def label_vector(self, pos: int, name: str) -> tuple[np.ndarray, int]:
        """The list of n numbers at `pos` (after white space)."""
        m = self.vector.match(self.data, pos)
        if not m:
            raise self._vector_error(pos, name)
        values = np.array([float(x) for x in m.group(1).split(b",")], dtype=np.float64)
        if not np.isfinite(values).all():
            raise self.error(pos, f"label of {excerpt(name)} holds a number that is not finite")
        return values, m.end()

    def _vector_error(self, pos: int, name: str) -> InputError:
        # Only after the fast pattern failed: find out why, for the message.
        label = f"label of {excerpt(name)}"
        if self.data[pos:pos + 1] != b"[":
            return self.error(pos, f"{label} is not a list of {self.n} numbers")
        p, count = self.skip(pos + 1), 0
        if self.data[p:p + 1] != b"]":
            while True:
                m = _NUMBER.match(self.data, p)
                if not m or self.data[m.end():m.end() + 1] in _AFTER_NUMBER:
                    found = excerpt(self.data[p:p + 30].decode("utf-8", "replace"), 20)
                    return self.error(p, f"{label}: value {count + 1} is not a number of at most {_D} digits "
                                         f"(found {found})")
                count += 1
                if count > self.n:
                    return self.error(pos, f"{label} has more than {self.n} values, a probability label has {self.n}")
                p = self.skip(m.end())
                if self.data[p:p + 1] == b"]":
                    break
                if self.data[p:p + 1] != b",":
                    return self.syntax(p, "',' or ']' in a label")
                p = self.skip(p + 1)
        return self.error(pos, f"{label} has {count} values, a probability label has {self.n}")

    def scalar(self, pos: int, key: str) -> tuple[Any, int]:
        """A header value: a string, a number, true, false or null."""
        char = self.data[pos:pos + 1]
        if char == b'"':
            return self.string(pos, MAX_STRING_CHARS, f"the value of {excerpt(key)}")
        for word, value in _LITERALS.items():
            if self.data.startswith(word, pos):
                return value, pos + len(word)
        return self.number(pos)

    def header_list(self, pos: int, key: str) -> tuple[list[Any], int]:
        items: list[Any] = []
        p = self.skip(pos + 1)
        if self.data[p:p + 1] == b"]":
            return items, p + 1
        while True:
            if len(items) >= MAX_HEADER_ITEMS:
                raise self.error(pos, f"header entry {excerpt(key)} lists more than {MAX_HEADER_ITEMS} values")
            value, p = self.scalar(self.skip(p), key)
            items.append(value)
            p = self.skip(p)
            if self.data[p:p + 1] == b"]":
                return items, p + 1
            p = self.expect(p, b",", "',' or ']'")

    # --- objects --------------------------------------------------------------------------------------
    def members(self, pos: int, on_member) -> int:
        """Parse `{ "key": value, ... }` at `pos`; `on_member(key, key_pos, value_pos)` parses each
        value and returns the position after it. Returns the position after the closing brace."""
        p = self.skip(self.expect(pos, b"{", "'{'"))
        if self.data[p:p + 1] == b"}":
            return p + 1
        while True:
            key_pos = self.skip(p)
            key, p = self.string(key_pos, MAX_NAME_CHARS, "a name")
            p = self.skip(self.expect(p, b":", "':'"))
            p = self.skip(on_member(key, key_pos, p))
            char = self.data[p:p + 1]
            if char == b"}":
                return p + 1
            if char != b",":
                raise self.syntax(p, "',' or '}'")
            p += 1

    def add_label(self, target: dict[str, np.ndarray], key: str, key_pos: int, pos: int) -> int:
        if key in target:
            raise self.error(key_pos, f"{excerpt(key)} is labelled twice")
        if self.entries >= MAX_ENTRIES:
            raise self.error(key_pos, f"more than {MAX_ENTRIES} labels")
        target[key], end = self.label_vector(pos, key)
        self.entries += 1
        return end

    def document(self) -> LabelDocument:
        doc = LabelDocument()
        start = 3 if self.data.startswith(b"\xef\xbb\xbf") else 0

        def member(key: str, key_pos: int, pos: int) -> int:
            char = self.data[pos:pos + 1]
            if key == "labels" and char == b"{":
                if doc.labels is not None:
                    raise self.error(key_pos, "'labels' appears twice")
                doc.labels = {}
                return self.members(pos, lambda k, kp, vp: self.add_label(doc.labels, k, kp, vp))
            if char == b"[" and self.data[self.skip(pos + 1):self.skip(pos + 1) + 1] != b'"':
                return self.add_label(doc.bare, key, key_pos, pos)
            if key in doc.header:
                raise self.error(key_pos, f"header entry {excerpt(key)} appears twice")
            if len(doc.header) >= MAX_HEADER_ITEMS:
                raise self.error(key_pos, f"more than {MAX_HEADER_ITEMS} header entries")
            doc.not_labels.append((key, key_pos))
            if char == b"[":
                doc.header[key], end = self.header_list(pos, key)
            elif char == b"{":
                raise self.error(pos, f"{excerpt(key)} holds an object; only 'labels' may")
            else:
                doc.header[key], end = self.scalar(pos, key)
            return end

        end = self.skip(self.members(start, member))
        if end != len(self.data):
            raise self.syntax(end, "the end of the file after the closing '}'")
        return doc


def parse_label_json(data: bytes, source: str, n_values: int) -> LabelDocument:
    """The header and labels of a JSON label file; `InputError` (one line) if it is not one."""
    return _Parser(data, source, n_values).document()


__all__ = ["LabelDocument", "parse_label_json"]
