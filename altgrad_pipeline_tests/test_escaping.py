"""Untrusted run names and tags never break a table, inject HTML, or escape a folder."""

from __future__ import annotations

import html

import polars as pl
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from altgrad_pipeline.escaping import escape_html, escape_markdown, markdown_code, safe_filename
from altgrad_pipeline.markdown import markdown_table


def test_markdown_specials_are_escaped():
    assert escape_markdown("| <script> ** [x](y)") == r"\| &lt;script&gt; \*\* \[x\]\(y\)"
    assert "<" not in escape_markdown("<img src=x onerror=alert(1)>")


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1).filter(lambda t: t.strip(" ") == t))
def test_code_spans_show_the_text_exactly(text):
    """No backslash escapes inside a code span: `fp8_format` reads fp8_format, not fp8\\_format."""
    rendered = MarkdownIt("commonmark", {"html": False}).renderInline(f"key {markdown_code(text)}.")
    assert rendered.startswith("key <code>") and rendered.endswith("</code>.")
    assert html.unescape(rendered.removeprefix("key <code>").removesuffix("</code>.")) == text


def test_html_is_escaped():
    assert escape_html('<script>alert("x")</script>') == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


@given(st.text())
def test_table_rows_stay_single_rows_whatever_the_name(name):
    table = markdown_table(pl.DataFrame({"name": [name], "n": [1]}))
    body = table.splitlines()[2]
    assert body.count("|") - body.count("\\|") == 3  # the row's own separators, nothing more


@given(st.text())
def test_file_names_are_safe(name):
    cleaned = safe_filename(name)
    assert "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in cleaned)


def test_distinct_names_stay_distinct_files():
    assert safe_filename("a/b") != safe_filename("a_b")


def test_numbers_and_missing_values_render():
    table = markdown_table(pl.DataFrame({"x": [1.23456789, float("nan"), float("inf"), None]}))
    assert table.splitlines()[2:] == ["| 1.235 |", "| NaN |", "| +inf |", "| — |"]


def test_bidi_and_zero_width_characters_are_made_visible():
    from altgrad_pipeline.escaping import escape_html, escape_markdown

    name = "run\u202eexe.txt\u200b\u2066x"
    for escaped in (escape_markdown(name), escape_html(name)):
        assert not any(ch in escaped for ch in "\u202e\u200b\u2066")
        assert "U+202E" in escaped.replace("\\", "") and "U+200B" in escaped.replace("\\", "")
