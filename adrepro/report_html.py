"""The HTML report ``reports/index.html``: one self-contained file (CSS inline, charts as base64 ``data:`` URIs, no
external resource) rendered by Jinja from ``reports/templates/index.html.j2``.

It shows both papers from the very view models the Markdown reports are rendered from (``adrepro.report.context``
plus the charts of ``adrepro.figures``): claim verdicts, every table, figure-only ablations, latency, the other
profiles' runs, printing errors. A reproduced cell's provenance (result files, teacher, data, scale, commit) is
its tooltip (``title``); the provenance tables follow each table as footnotes.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

INDEX = "index.html"
TEMPLATE = "index.html.j2"


def _inline(value: Any) -> Markup:
    """Escape, then the Markdown the shared view models carry: ``**x**`` (bold as printed) and ```x``` (code)."""
    html = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", str(escape(value)))
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def environment(templates: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)), undefined=jinja2.StrictUndefined,
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = _inline
    return env


def write(out_dir: Path, contexts: dict[str, dict[str, Any]], templates: Path) -> Path:
    """Render ``index.html`` into ``out_dir``; ``contexts``: per paper the Markdown's context with its ``charts``
    (files relative to ``out_dir``)."""
    papers = []
    for paper, ctx in contexts.items():
        charts = [{**c, "src": data_uri(out_dir / c["file"])} for c in ctx["charts"]]
        papers.append({**ctx, "charts": charts, "anchor": f"paper-{paper.lower()}"})
    html = environment(templates).get_template(TEMPLATE).render(papers=papers)
    path = Path(out_dir) / INDEX
    path.write_text(html, encoding="utf-8")
    return path
