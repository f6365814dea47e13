"""The report's pages as blocks (headings, paragraphs, bullets, tables, code, figures) and the two
renderers: report.md and index.html say the same thing because both are drawn from one list of
blocks. The study report (hpo.analysis.figures) and the comparison (hpo.analysis.compare) use them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go
import plotly.io as pio

PLOTLY_JS = "plotly.min.js"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # may hold `code` and **bold**


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Code:
    text: str
    lang: str = ""


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: list, pngs: dict[str, str]) -> str:
    """Markdown of ``blocks``, each figure as its PNG ({figure name: file name}); no PNGs, no figures."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, Bullets):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in block.rows] + [""]
        elif isinstance(block, Code):
            lines += [f"```{block.lang}", block.text, "```", ""]
        elif isinstance(block, Figure) and block.name in pngs:
            lines += [f"![{block.caption}]({pngs[block.name]})", ""]
    if not pngs:
        lines += ["The figures are in `index.html` (interactive; no PNGs were written).", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}code{font-size:90%}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}"""


def html_page(
    title: str, blocks: list, figs: dict[str, go.Figure], size: Callable[[str], tuple[int, int]] = lambda _: (900, 500)
) -> str:
    """A whole offline page of ``blocks``, each figure as an interactive div; plotly.js loaded once, locally."""
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            head = f"<thead><tr>{head}</tr></thead>" if any(block.header) else ""  # a key/value table has none
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in block.rows)
            parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Figure) and block.name in figs:
            div = pio.to_html(
                figs[block.name],
                full_html=False,
                include_plotlyjs=False,
                div_id=f"fig-{block.name}",
                default_width="100%",
                default_height=f"{size(block.name)[1] + 50}px",
            )
            parts.append(f"<figure>{div}<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{STYLE}</style><script src="{PLOTLY_JS}"></script></head>\n<body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
