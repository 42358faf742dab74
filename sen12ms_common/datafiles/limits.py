"""The limits of the label and split readers, in one place, and the bounded excerpt of a value
that their error lines show. A file over a limit is refused before the reader allocates for it;
docs/datafiles.md gives the sizes of the full dataset's files that these are set against.
"""

from __future__ import annotations

# A label or split file, read whole. The full dataset's JSON labels are ~40 MB, its pickled
# labels 35-50 MB (140 MB at pickle protocol 0).
MAX_FILE_BYTES = 256 << 20
# Labelled patches or names in one file: SEN12MS has 180,662 patches.
MAX_ENTRIES = 400_000
# Characters of one patch file name (SEN12MS names have about 35).
MAX_NAME_CHARS = 256
# Characters of any other string: a JSON header value, a string or bytes object of a pickle
# (names, dtype codes, an array's raw bytes).
MAX_STRING_CHARS = 4096
# Digits of one number written as text (JSON, pickle protocol 0), per part (integer, fraction).
MAX_NUMBER_DIGITS = 64
# Items of a JSON header list (the 17 class names).
MAX_HEADER_ITEMS = 64

# Pickles only. Numbers in one numpy array (a label has 17).
MAX_ARRAY_VALUES = 4096
# Objects a pickle may create: each value, container item and memo entry counts one. The full
# dataset's label pickle creates about 30 per patch.
MAX_PICKLE_OBJECTS = 32 * MAX_ENTRIES
# Bytes of all strings, bytes and array data a pickle may create (the full dataset's label
# pickles create 55-83 MB).
MAX_PICKLE_DATA_BYTES = MAX_FILE_BYTES
# Values on the pickle machine's stack, and open marks (Python's pickler batches 1000 items).
MAX_PICKLE_STACK = 1_000_000
# Nesting of containers in a loaded pickle, and values in it counted as a tree (a value reached
# twice through shared references counts twice).
MAX_DEPTH = 8
MAX_TREE_VALUES = 4 * MAX_ENTRIES
# One text line of a pickle (protocol 0 writes a string's escaped bytes on one line).
MAX_PICKLE_LINE = 8 * MAX_STRING_CHARS

# Characters of a value that an error line shows.
EXCERPT_CHARS = 60


def excerpt(value: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """The quoted start of a string from a file, at most about `limit` characters, cut with
    '...'; control characters are escaped, so the excerpt never breaks the error line."""
    text = repr(value[:limit])
    if len(text) > limit + 2:
        return text[: limit + 2] + "..."
    return text + "..." if len(value) > limit else text


def describe(value: object) -> str:
    """A value from a file as an error line shows it: strings and numbers as a bounded excerpt,
    anything else by its type alone (never the repr of a container, which may be huge)."""
    if isinstance(value, (str, bytes)):
        return excerpt(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return clip(repr(value))
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` unquoted, escaped and cut as `excerpt` does (for names such as a pickle's globals)."""
    inner = repr(text[:limit])[1:-1]
    return inner[:limit] + "..." if len(inner) > limit or len(text) > limit else inner


__all__ = [
    "MAX_FILE_BYTES", "MAX_ENTRIES", "MAX_NAME_CHARS", "MAX_STRING_CHARS", "MAX_NUMBER_DIGITS",
    "MAX_HEADER_ITEMS", "MAX_ARRAY_VALUES", "MAX_PICKLE_OBJECTS", "MAX_PICKLE_DATA_BYTES",
    "MAX_PICKLE_STACK", "MAX_DEPTH", "MAX_TREE_VALUES", "MAX_PICKLE_LINE", "EXCERPT_CHARS",
    "excerpt", "describe", "clip",
]
