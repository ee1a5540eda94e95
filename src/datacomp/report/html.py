"""HTML building blocks of the report page: escaped text, tables, figures, sample cards, the page.

The page is static and self-contained: one stylesheet inlined, no script, no web font, images as
relative paths to files beside it, so it reads the same from a file:// URL with no network.
"""
from __future__ import annotations

from html import escape
from typing import Any, Iterable, Sequence

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:24px 0 6px}p.lead{color:#555;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:12.5px}
th,td{padding:3px 7px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f5f5f7;position:sticky;top:0}th:first-child,td:first-child{text-align:left}
tr.chance td{color:#777;font-style:italic}tr.default td{font-weight:600;background:#f0f6fb}tr.paper td{color:#5b3c88}
.scroll{overflow-x:auto}.notes{background:#fff7e0;border:1px solid #f0d58c;padding:8px 14px;margin:12px 0}
.notes li{margin:2px 0;font-family:ui-monospace,monospace;font-size:12px}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:12.5px}
.grid{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0 14px}
.card{width:150px;border:1px solid #e5e5e5;border-radius:4px;padding:6px;font-size:11px;background:#fafafa}
.card img{width:96px;height:96px;object-fit:contain;display:block;margin:0 auto 4px;background:#fff}
.card .cap{max-height:4.4em;overflow:hidden}.card .meta{color:#666}.card .noimg{height:96px;color:#999;text-align:center;line-height:96px}
.card .why{color:#a4420a;word-break:break-word}.kept{border-left:3px solid #2c7fb8}.dropped{border-left:3px solid #d95f0e}
dl.explain dt{font-weight:600}dl.explain dd{margin:0 0 6px 16px;color:#444}
"""


def esc(v: Any) -> str:
    return escape(str(v), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], classes: Sequence[str] | None = None) -> str:
    """A table of already formatted cells (escaped here); ``classes`` gives each body row a class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = classes[i] if classes and i < len(classes) and classes[i] else ""
        attr = f' class="{esc(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure(src: str, caption: str, alt: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{esc(caption)}</figcaption></figure>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def heading(level: int, text: str, anchor: str | None = None) -> str:
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return f"<h{level}{aid}>{esc(text)}</h{level}>"


def notes(items: Sequence[str], title: str) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{esc(n)}</li>" for n in items)
    return f'<div class="notes"><strong>{esc(title)}</strong><ul>{lis}</ul></div>'


def explain(terms: Sequence[tuple[str, str]]) -> str:
    return '<dl class="explain">' + "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in terms) + "</dl>"


def card(c: dict[str, Any], kind: str) -> str:
    img = (f'<img src="{esc(c["thumb"])}" alt="{esc(c["uid"])}">' if c.get("thumb")
           else '<div class="noimg">no image</div>')
    meta = [f"{k} {c[k]:.3f}" for k in ("L/14", "B/32") if k in c]
    if "size" in c:
        meta.append(c["size"])
    truth = f'<div class="meta">truth: {esc(c["truth"])}</div>' if c.get("truth") else ""
    if c.get("why"):
        truth += f'<div class="why">dropped by {esc(c["why"])}</div>'
    return (f'<div class="card {kind}">{img}<div class="cap">{esc(c["caption"])}</div>'
            f'<div class="meta">{esc(" · ".join(meta))}</div>{truth}</div>')


def grid(cards: Sequence[dict[str, Any]], kind: str) -> str:
    if not cards:
        return para(f"(no {kind} rows)")
    return '<div class="grid">' + "".join(card(c, kind) for c in cards) + "</div>"


def page(title: str, lead: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{heading(1, title)}<p class=\"lead\">{esc(lead)}</p>"
            + "\n".join(b for b in body if b) + "</main></body></html>\n")
