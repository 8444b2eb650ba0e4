"""The output folder of `maskrcnn inspect`: every picture (maskrcnn.inspect.pictures), then
`index.html` (every picture with its caption) and `summary.json` (the numbers behind the pictures)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..files import atomic_write_text

if TYPE_CHECKING:
    from .stages import Inspection

__all__ = ["render_html", "write_inspection"]


def write_inspection(
    inspection: Inspection, out: str | Path, *, title: str, details: Optional[dict[str, str]] = None
) -> list[dict]:
    """Draw every picture into `out`, then `index.html` and `summary.json`; returns the picture list
    (file, title, caption)."""
    from .pictures import draw_all

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pictures, summary = draw_all(inspection, out)
    summary["pictures"] = pictures
    summary["details"] = dict(details or {})
    summary["notes"] = list(inspection.notes)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    page = render_html(pictures, title=title, details=details, notes=inspection.notes)
    atomic_write_text(out / "index.html", page)
    return pictures


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1400px; padding: 0 16px;
       color: #222; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; }
table.meta { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
table.meta td { padding: 2px 12px 2px 0; vertical-align: top; }
table.meta td:first-child { color: #666; }
nav { font-size: 14px; margin-bottom: 16px; line-height: 1.7; }
figure { margin: 0 0 32px; padding: 12px; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { margin-top: 10px; font-size: 14px; line-height: 1.45; }
figcaption b { font-size: 16px; }
.notes { color: #a33; font-size: 14px; }
"""


def render_html(
    pictures: list[dict], *, title: str, details: Optional[dict[str, str]] = None, notes: list[str] = ()
) -> str:
    """A self-contained page: a table of details, links, then every picture with its caption."""
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in (details or {}).items())
    links = " · ".join(f'<a href="#{esc(p["id"])}">{esc(p["title"])}</a>' for p in pictures)
    figures = "\n".join(
        f'<figure id="{esc(p["id"])}"><img src="{esc(p["file"])}" alt="{esc(p["title"])}">'
        f"<figcaption><b>{i}. {esc(p['title'])}</b><br>{esc(p['caption'])}</figcaption></figure>"
        for i, p in enumerate(pictures, start=1)
    )
    note_html = "".join(f'<p class="notes">{esc(n)}</p>' for n in notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>\n"
        f'<h1>{esc(title)}</h1>\n<table class="meta">{rows}</table>\n{note_html}'
        f"<nav>{links}</nav>\n{figures}\n</body></html>\n"
    )
