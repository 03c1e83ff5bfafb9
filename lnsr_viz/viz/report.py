"""Self-contained, offline, interactive HTML reports.

A :class:`Report` collects blocks -- text, plotly figures, tables, key/value lists -- and
renders one HTML file that works with no network: the CSS is inline, plotly.js is embedded
exactly once in the page (not once per figure), and there are no external scripts, styles
or fonts. Every piece of user text (titles, headings, captions, table cells) is escaped.

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
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .figures import _atomic_write_bytes, _format_cell

__all__ = ["Report"]

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --bg-alt: #f6f8fa; --accent: #0072b2; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 1120px; margin: 0 auto; padding: 2rem 1.5rem 3rem; }
header h1 { margin: 0 0 .25rem; font-size: 1.8rem; }
header .subtitle { margin: 0; color: var(--muted); }
nav.toc { margin: 1.5rem 0; padding: .75rem 1rem; background: var(--bg-alt); border: 1px solid var(--line);
          border-radius: 6px; }
nav.toc h2 { margin: 0 0 .35rem; font-size: .95rem; text-transform: uppercase; letter-spacing: .04em;
             color: var(--muted); }
nav.toc ol { margin: 0; padding-left: 1.4rem; }
a { color: var(--accent); }
section.block { margin: 1.75rem 0; }
section.block > h2 { font-size: 1.3rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
code { font: .9em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--bg-alt);
       padding: .05em .3em; border-radius: 4px; }
figure { margin: 1rem 0; }
figcaption, .caption { color: var(--muted); font-size: .92rem; margin-top: .35rem; }
.table-wrap { overflow-x: auto; }
table.data, table.kv { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
table.data th, table.data td, table.kv th, table.kv td { border: 1px solid var(--line); padding: .3rem .6rem;
                                                         vertical-align: top; }
table.data thead th { background: var(--bg-alt); text-align: left; }
table.data tbody tr:nth-child(even) { background: #fbfcfd; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { text-align: left; background: var(--bg-alt); font-weight: 600; }
footer { margin-top: 3rem; padding-top: .75rem; border-top: 1px solid var(--line); color: var(--muted);
         font-size: .85rem; }
"""


def _version() -> str:
    """The installed lnsr_viz version, or ``"unknown"`` when running from an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lnsr_viz")
    except PackageNotFoundError:
        return "unknown"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")


def _inline(text: str) -> str:
    """Escape ``text`` and apply the inline subset: ``**bold**`` and ```code```."""
    codes: list[str] = []

    def _stash(m: re.Match[str]) -> str:
        codes.append(f"<code>{m.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    out = _CODE.sub(_stash, _esc(text))  # code spans first, so ** inside code stays literal
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _markdown(text: str) -> str:
    """Render a tiny markdown subset: paragraphs (blank-line separated), ``- `` bullet lists,
    ``**bold**`` and ```code```. Everything else is escaped and shown literally."""
    parts: list[str] = []
    para: list[str] = []
    items: list[str] = []

    def flush(para: list[str], items: list[str]) -> None:
        if para:
            parts.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
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
    return "\n".join(parts)


@dataclass
class _Block:
    heading: str | None
    body: str
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
        body = markdown_or_html if html else _markdown(markdown_or_html)
        return self._add(f'<div class="text">{body}</div>', heading)

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
        cap = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
        self._n_figures += 1
        return self._add(f'<figure class="figure">{div}{cap}</figure>', heading)

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
        head = "".join(f'<th scope="col">{_esc(c)}</th>' for c in cols)
        rows = []
        for record in df.itertuples(index=False, name=None):
            cells = "".join(
                ('<td class="num">' if num else "<td>") + _esc(_format_cell(v, float_format)) + "</td>"
                for v, num in zip(record, numeric)
            )
            rows.append(f"<tr>{cells}</tr>")
        if not rows:
            rows.append(f'<tr><td colspan="{max(len(cols), 1)}"><em>(no rows)</em></td></tr>')
        cap = f'<p class="caption">{_inline(caption)}</p>' if caption else ""
        table = (
            f'<div class="table-wrap"><table class="data"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
        return self._add(table + cap, heading)

    def add_key_values(self, mapping: Mapping[str, Any], *, heading: str | None = None) -> Report:
        """Add a two-column key/value table, e.g. the config, the machine or the timings.

        Floats are shown with 6 significant digits; lists and dicts as compact JSON.
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"Report.add_key_values expects a mapping. Got {type(mapping).__name__} instead.")
        rows = "".join(
            f'<tr><th scope="row">{_esc(k)}</th><td>{_esc(_kv_value(v))}</td></tr>' for k, v in mapping.items()
        )
        return self._add(f'<table class="kv"><tbody>{rows}</tbody></table>', heading)

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
        """Render the whole report as one HTML document (a str)."""
        blocks = self._anchors()
        toc_items = "".join(
            f'<li><a href="#{b.anchor}">{_esc(b.heading)}</a></li>' for b in blocks if b.anchor is not None
        )
        toc = f'<nav class="toc"><h2>Contents</h2><ol>{toc_items}</ol></nav>' if toc_items else ""
        sections = []
        for b in blocks:
            if b.anchor is not None:
                sections.append(f'<section class="block" id="{b.anchor}"><h2>{_esc(b.heading)}</h2>{b.body}</section>')
            else:
                sections.append(f'<section class="block">{b.body}</section>')
        plotly_js = ""
        if self._n_figures:
            from plotly.offline import get_plotlyjs

            plotly_js = (
                "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
                f'<script type="text/javascript">{get_plotlyjs()}</script>'
            )
        now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        subtitle = f'<p class="subtitle">{_esc(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="lnsr_viz {_esc(_version())}">\n'
            f"<title>{_esc(self.title)}</title>\n<style>{_CSS}</style>\n{plotly_js}\n</head>\n<body>\n"
            f'<div class="page">\n<header><h1>{_esc(self.title)}</h1>{subtitle}</header>\n{toc}\n'
            f"<main>\n{chr(10).join(sections)}\n</main>\n"
            f"<footer>Generated by lnsr_viz {_esc(_version())} on {_esc(now)}.</footer>\n"
            "</div>\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` atomically (temporary file in the same folder, then
        ``os.replace``), creating parent folders. If rendering or writing fails, an existing file
        at ``path`` is left untouched. Returns the path."""
        text = self.to_html()
        return _atomic_write_bytes(Path(path), text.encode("utf-8"))


def _kv_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (Mapping, list, tuple)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)
