"""Run names, tags and notes are untrusted text: escape them for Markdown and HTML, and keep them
out of file names. Everything shown to a user goes through here."""

from __future__ import annotations

import hashlib
import html
import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")
_LINE_BREAKS_AND_CONTROLS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")
#: Bidirectional overrides/isolates and zero-width characters: invisible, yet they reorder or hide
#: the text around them (a run name could make a table row read differently than it is).
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def reveal_invisible(text: str) -> str:
    """Each bidi control or zero-width character shown as its code point, `<U+202E>`: visible, inert."""
    return _INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def escape_markdown(text: object) -> str:
    """Inline Markdown that renders as the literal text: specials backslash-escaped, `<`/`>` as
    entities (so `<script>` can never become a tag), newlines folded (a table row stays one row)."""
    value = "" if text is None else str(text)
    value = reveal_invisible(_LINE_BREAKS_AND_CONTROLS.sub(" ", value))
    value = _MARKDOWN_SPECIAL.sub(r"\\\1", value)
    return value.replace("\\<", "&lt;").replace("\\>", "&gt;")


def markdown_code(text: object) -> str:
    """Inline code of untrusted text, for prose. A code span shows its content literally, so nothing
    is backslash-escaped (the backslashes would show); the fence is one backtick longer than any
    run inside, and newlines fold. (Not for table cells: a `|` would still split the cell.)"""
    value = _LINE_BREAKS_AND_CONTROLS.sub(" ", "" if text is None else str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def escape_html(text: object) -> str:
    return html.escape(reveal_invisible("" if text is None else str(text)), quote=True)


def safe_filename(text: object, *, max_length: int = 60) -> str:
    """A file-name fragment from untrusted text: only [A-Za-z0-9._-], never empty or hidden, and
    suffixed with a short hash so that two names that clean up alike stay distinct."""
    raw = "" if text is None else str(text)
    cleaned = _UNSAFE_FILENAME.sub("_", raw).strip("._-")[:max_length] or "run"
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{cleaned}-{digest}"


_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_csv_text(text: str | None) -> str | None:
    """A text cell for a CSV opened in a spreadsheet: a leading `= + - @` (a formula there) gets a
    `'` in front, so a run name can never run as a formula."""
    if text is None or not text.startswith(_CSV_FORMULA_START):
        return text
    return "'" + text
