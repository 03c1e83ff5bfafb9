"""Self-contained, offline, interactive HTML reports.

A :class:`Report` collects blocks -- text, plotly figures, tables, key/value lists -- and
renders one HTML file that works with no network: the CSS is inline, plotly.js is embedded
exactly once in the page (not once per figure), and there are no external scripts, styles
or fonts. Every piece of user text (titles, headings, captions, table cells) is escaped.

The page is rendered from Jinja2 templates shipped with the package (``lnsr_viz/viz/templates``:
``report.html.j2`` the page, ``blocks.html.j2`` one macro per kind of block, ``report.css.j2``
the stylesheet), with autoescaping on. The report builders of the toolkit (comparison, diagnosis,
probe, study) are in :mod:`lnsr_viz.viz.reports`.

Example
-------
>>> from lnsr_viz.viz.report import Report
>>> rep = Report("LNSR vs vanilla", subtitle="3 seeds, MiniLM")
>>> rep.add_text("Noise at layer 0 is **damped** by `lnsr`.", heading="Summary")  # doctest: +ELLIPSIS
<lnsr_viz.viz.report.Report object at ...>
>>> "<h2" in rep.to_html()
True
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..utils.io import atomic_write_bytes
from .style import format_cell

__all__ = ["Report", "template_environment", "md_number", "md_table"]


@cache
def template_environment(*, markdown: bool = False) -> jinja2.Environment:
    """The Jinja2 environment of the package's templates (``lnsr_viz/viz/templates``).

    For the HTML templates (the default) autoescaping is on, with the standard library's entities (``&quot;``,
    ``&#x27;``). With ``markdown=True`` (``*.md.j2``, e.g. the study write-up) nothing is escaped and block tags
    take their line with them (``trim_blocks``, ``lstrip_blocks``), so one template line is one output line, and
    three filters format numbers and tables: ``fmt(spec)`` (Python's :func:`format`), ``num(digits)``
    (:func:`md_number`) and ``md_table(columns)`` (:func:`md_table`). In both, undefined names raise instead of
    rendering as empty text and a template's final newline is kept.
    """
    loader = jinja2.PackageLoader("lnsr_viz.viz", "templates")
    if markdown:
        env = jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        env.filters.update(fmt=format, num=md_number, md_table=md_table)
        return env
    return jinja2.Environment(loader=loader, autoescape=True, finalize=_escape_html,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


class _Html(str):
    """Text that is already HTML (escaped where it had to be): autoescaping leaves it as it is.

    The ``__html__`` protocol of Jinja2 / MarkupSafe: a value with this method is inserted unescaped. Report marks
    with it only what it built itself from escaped text, plotly's figure divs, plotly.js and ``add_text(...,
    html=True)`` bodies.
    """

    __slots__ = ()

    def __html__(self) -> str:
        return self


@jinja2.pass_eval_context
def _escape_html(eval_ctx: jinja2.nodes.EvalContext, value: Any) -> Any:
    """Escape each value as :func:`html.escape` does (markup passes through untouched; autoescaping then leaves the
    result alone), so the pages keep the entities they always had."""
    if not eval_ctx.autoescape or hasattr(value, "__html__"):
        return value
    return _Html(html.escape(str(value), quote=True))


def md_number(v: Any, digits: int = 3) -> str:
    """A number in the study's markdown: booleans as ``yes`` / empty, integers as they are, NaN as an en dash,
    small floats with ``digits`` significant digits, the rest with ``digits`` decimals."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 0.1 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def md_table(df: pd.DataFrame, columns: Mapping[str, str], digits: int = 3) -> str:
    """A markdown table of ``df``'s ``columns`` (name -> header), cells with :func:`md_number`."""
    head = "| " + " | ".join(columns.values()) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(md_number(row[c], digits).replace("|", "/") for c in columns) + " |"
            for _, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def _macros() -> Any:
    """The block macros of ``blocks.html.j2`` (each returns autoescaped markup)."""
    return template_environment().get_template("blocks.html.j2").module


def _version() -> str:
    """The installed lnsr_viz version, or ``"unknown"`` when running from an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lnsr_viz")
    except PackageNotFoundError:
        return "unknown"


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


def _inline(text: str) -> _Html:
    """Escape ``text`` and apply the inline subset: ``**bold**`` and ```code```."""
    codes: list[str] = []

    def _stash(m: re.Match[str]) -> str:
        codes.append(f"<code>{m.group(1)}</code>")  # group(1) is already escaped
        return f"\x00{len(codes) - 1}\x00"

    out = _CODE.sub(_stash, html.escape(str(text), quote=True))  # code spans first, so ** inside code stays literal
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return _Html(re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], out))


def _markdown(text: str) -> list[tuple[str, Any]]:
    """Parse a tiny markdown subset: paragraphs (blank-line separated), ``- `` bullet lists,
    ``**bold**`` and ```code```. Everything else is escaped and shown literally. Returns the parts
    that ``blocks.html.j2``'s ``text`` macro renders: ``("p", markup)`` and ``("ul", [markup, ...])``."""
    parts: list[tuple[str, Any]] = []
    para: list[str] = []
    items: list[str] = []

    def flush(para: list[str], items: list[str]) -> None:
        if para:
            parts.append(("p", _inline(" ".join(para))))
            para.clear()
        if items:
            parts.append(("ul", [_inline(i) for i in items]))
            items.clear()

    for block in re.split(r"\n\s*\n", text.strip()):
        for line in block.splitlines():
            m = _BULLET.match(line)
            if m:
                flush(para, [])
                items.append(m.group(1))
            elif items and line.startswith((" ", "\t")) and line.strip():
                items[-1] += " " + line.strip()  # continuation of a bullet
            elif line.strip():
                flush([], items)
                para.append(line.strip())
        flush(para, items)
    return parts


@dataclass
class _Block:
    heading: str | None
    body: str  # markup: the macro output of blocks.html.j2 (has __html__)
    anchor: str | None = None


class Report:
    """An offline, self-contained interactive HTML report.

    Parameters
    ----------
    title : str
        Page title and top heading.
    subtitle : str, default=''
        One line under the title (e.g. the experiment and the machine).

    Notes
    -----
    Blocks are rendered in the order they are added. Blocks with a ``heading`` start a new
    section and appear in the table of contents. Figures are rendered when added (a snapshot:
    later changes to the figure object are not picked up). plotly.js (~5 MB) is embedded once,
    and only when the report holds at least one figure. Each ``add_*`` returns the report so
    calls can be chained.
    """

    def __init__(self, title: str, *, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._blocks: list[_Block] = []
        self._n_figures = 0

    # ---------------------------------------------------------------- adding content

    def _add(self, body: str, heading: str | None) -> Report:
        if heading is not None and not isinstance(heading, str):
            raise TypeError(f"The 'heading' parameter of Report must be a str or None. Got {heading!r} instead.")
        self._blocks.append(_Block(heading=heading, body=body))
        return self

    def add_text(self, markdown_or_html: str, *, heading: str | None = None, html: bool = False) -> Report:
        """Add prose. Markdown subset by default (paragraphs, ``- `` bullets, ``**bold**``,
        ```code```), escaped; with ``html=True`` the string is inserted as-is (trusted HTML only)."""
        if not isinstance(markdown_or_html, str):
            raise TypeError(f"Report.add_text expects a str. Got {type(markdown_or_html).__name__} instead.")
        if html:
            return self._add(_macros().raw_text(_Html(markdown_or_html)), heading)
        return self._add(_macros().text(_markdown(markdown_or_html)), heading)

    def add_figure(self, fig: go.Figure, *, heading: str | None = None, caption: str = "") -> Report:
        """Add an interactive plotly figure, with an optional "how to read this figure" caption
        (markdown inline subset: ``**bold**``, ```code```)."""
        if not isinstance(fig, go.Figure):
            raise TypeError(
                f"Report.add_figure expects a plotly.graph_objects.Figure. Got {type(fig).__name__} instead."
            )
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            default_height="480px",
            config={"displaylogo": False, "responsive": True},
        )
        self._n_figures += 1
        return self._add(_macros().figure(_Html(div), _inline(caption) if caption else ""), heading)

    def add_table(
        self,
        df: pd.DataFrame,
        *,
        heading: str | None = None,
        caption: str = "",
        float_format: str = "{:.3f}",
    ) -> Report:
        """Add a DataFrame as an HTML table: cells escaped, floats with ``float_format``, missing
        values as an en dash, numeric columns right-aligned. A non-default index becomes columns."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"Report.add_table expects a pandas DataFrame. Got {type(df).__name__} instead.")
        if not isinstance(df.index, pd.RangeIndex):
            df = df.reset_index()
        cols = list(df.columns)
        numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
        rows = [[(format_cell(v, float_format), num) for v, num in zip(record, numeric)]
                for record in df.itertuples(index=False, name=None)]
        return self._add(_macros().table(cols, rows, _inline(caption) if caption else ""), heading)

    def add_key_values(self, mapping: Mapping[str, Any], *, heading: str | None = None) -> Report:
        """Add a two-column key/value table, e.g. the config, the machine or the timings.

        Floats are shown with 6 significant digits; lists and dicts as compact JSON.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"Report.add_key_values expects a mapping. Got {type(mapping).__name__} instead.")
        return self._add(_macros().key_values([(k, _kv_value(v)) for k, v in mapping.items()]), heading)

    # ---------------------------------------------------------------- rendering

    def _anchors(self) -> list[_Block]:
        """Give every headed block a unique slug id (``results``, ``results-2``, ...)."""
        seen: dict[str, int] = {}
        out = []
        for b in self._blocks:
            anchor = None
            if b.heading is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", b.heading.lower()).strip("-") or "section"
                seen[slug] = seen.get(slug, 0) + 1
                anchor = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
            out.append(_Block(b.heading, b.body, anchor))
        return out

    def to_html(self) -> str:
        """Render the whole report as one HTML document (a str), from ``report.html.j2``."""
        blocks = self._anchors()
        plotly_js = _Html("")
        if self._n_figures:
            from plotly.offline import get_plotlyjs

            plotly_js = _Html(get_plotlyjs())
        now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        return template_environment().get_template("report.html.j2").render(
            title=self.title, subtitle=self.subtitle, version=_version(), now=now, plotly_js=plotly_js,
            blocks=blocks, toc=[b for b in blocks if b.anchor is not None])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` atomically (temporary file in the same folder, then
        ``os.replace``), creating parent folders. If rendering or writing fails, an existing file
        at ``path`` is left untouched. Returns the path."""
        text = self.to_html()
        return atomic_write_bytes(Path(path), text.encode("utf-8"))


def _kv_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (Mapping, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)
