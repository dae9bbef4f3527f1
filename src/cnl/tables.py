"""Cells of the files people open: CSV that a spreadsheet reads as data, Markdown tables
whose cells stay cells.

Names in these files come from outside: a class is named by its dataset's folder, an
image by its path. A spreadsheet runs a CSV cell that begins with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return as a formula (OWASP, "CSV Injection"), so such a cell that is not
a number is written behind a ``'``, which spreadsheets show as text and do not run. In a
Markdown table a ``|`` ends the cell and a line break the row, and a Markdown viewer renders
HTML: the three are written as character references, which every viewer shows as the
characters themselves.
"""

from __future__ import annotations

import re
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def _runs(text: str) -> bool:
    """Whether a spreadsheet would run ``text`` (or, behind our ``'``, mistake it for ours)."""
    if text.startswith("'"):
        return _runs(text[1:])
    return text.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(text)


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV writer should write it: text that a spreadsheet would run as a
    formula gets a leading ``'``; numbers, and text that is a number, are left as they are.
    ``from_csv_cell`` gives the text back exactly."""
    return "'" + value if isinstance(value, str) and _runs(value) else value


def from_csv_cell(text: str) -> str:
    """The text ``csv_cell`` was given."""
    return text[1:] if text.startswith("'") and _runs(text[1:]) else text


def csv_row(values: list[Any]) -> list[Any]:
    """Every cell of a row through ``csv_cell``."""
    return [csv_cell(value) for value in values]


MARKDOWN_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "\n": " ", "\r": " "}


def markdown_cell(text: Any) -> str:
    """``text`` as one Markdown table cell: ``|``, line breaks and HTML cannot leave it."""
    return "".join(MARKDOWN_ESCAPES.get(char, char) for char in str(text))
