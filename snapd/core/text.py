"""Text that reaches a terminal or a log line: which characters are unsafe, and how to show them.

Unsafe are Unicode control (Cc: C0, DEL, C1 such as U+0085 and U+009B),
format (Cf: bidi marks and overrides, zero-width joiners, U+FEFF) and
line/paragraph separator (Zl, Zp) characters: they move the cursor, clear
the screen, reorder what follows or split one line into several.  Lone
surrogates (Cs) cannot even be encoded for output.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = {"Cc": "control", "Cf": "format", "Zl": "separator", "Zp": "separator"}
"""Categories free text (aliases, labels) may not contain, with the word a message uses."""
_ESCAPED_CATEGORIES = {*REFUSED_CATEGORIES, "Cs"}


def first_refused(text: str) -> str | None:
    """The first character of `text` in a refused category, or None."""
    if text.isprintable():  # fast path: isprintable() is False for every refused character
        return None
    return next((c for c in text if unicodedata.category(c) in REFUSED_CATEGORIES), None)


def describe_char(ch: str) -> str:
    """`U+2028 (LINE SEPARATOR), a Unicode separator character`."""
    cat = unicodedata.category(ch)
    name = unicodedata.name(ch, "")
    label = f"U+{ord(ch):04X}" + (f" ({name})" if name else "")
    return f"{label}, a Unicode {REFUSED_CATEGORIES.get(cat, 'unprintable')} character"


def escape_char(ch: str) -> str:
    """`\\x1b`, `\\u202e`, `\\U000e0001`: the Python-style escape of one character."""
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def visible(text: str) -> str:
    """`text` with every control, format, separator and surrogate character escaped."""
    if text.isprintable():
        return text
    return "".join(escape_char(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c
                   for c in text)


def human_size(n: int) -> str:
    """`512 bytes`, `1.5 GiB`: sizes in messages and tables."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"
