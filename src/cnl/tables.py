"""Cells of the files people open: CSV that a spreadsheet reads as data, Markdown tables
whose cells stay cells, figure labels drawn as written; and ``Table``, the one writer of
every table we print or render.

Names in these files come from outside: a class is named by its dataset's folder, an
image by its path. A spreadsheet runs a CSV cell that begins with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return as a formula (OWASP, "CSV Injection"), so such a cell that is not
a number is written behind a ``'``, which spreadsheets show as text and do not run. In a
Markdown table a ``|`` ends the cell and a line break the row, and a Markdown viewer renders
HTML: the three are written as character references, which every viewer shows as the
characters themselves. Matplotlib reads text between two ``$`` as TeX math, which draws
another text or fails to parse (a class named ``$\\frac$``): a figure label escapes every
``$``, and shows a tab or a line break as backslash-t or backslash-n, not a missing glyph.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cnl.errors import printable

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


MARKDOWN_ESCAPES = {"&": "&amp;", ">": "&gt;", "|": "&#124;", "\n": " ", "\r": " "}
# A < opens HTML in Markdown only before a letter, /, ! or ? (CommonMark's tags, comments,
# declarations, autolinks): "p < 1e-6" stays as people read it.
OPENS_HTML = re.compile(r"<(?=[A-Za-z/!?])")


def markdown_cell(text: Any) -> str:
    """``text`` as one Markdown table cell: ``|``, line breaks and HTML cannot leave it."""
    return OPENS_HTML.sub("&lt;", "".join(MARKDOWN_ESCAPES.get(char, char) for char in str(text)))


def figure_text(text: Any) -> str:
    """``text`` as a matplotlib label that draws exactly its characters."""
    return printable(str(text)).replace("$", r"\$")


@dataclass(frozen=True)
class Table:
    """Rows of cells under a header, kept as the cells themselves: written as Markdown for
    the console and ``.md`` files, as HTML for reports, never parsed back from its text.
    An empty cell is written ``| |``. (Eight short tables did not earn ``tabulate``: its
    Markdown pads cells to a common width, which these outputs never had.)"""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> Table:
        return cls(tuple(map(str, header)), tuple(tuple(map(str, row)) for row in rows))

    def markdown(self) -> str:
        def line(cells: tuple[str, ...]) -> str:
            return "|" + "".join(f" {markdown_cell(cell)} |" if cell else " |" for cell in cells)

        return "\n".join([line(self.header), "|---" * len(self.header) + "|", *map(line, self.rows)])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


Block = str | Table  # a paragraph (its lines) or a table: what a report section is made of


def markdown(blocks: Iterable[Block]) -> str:
    """Blocks as Markdown, a blank line between each."""
    return "\n\n".join(block.markdown() if isinstance(block, Table) else block for block in blocks)
