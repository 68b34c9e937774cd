"""`report.html`: one self-contained file (inline CSS, PNG embedded as base64) that opens anywhere."""

from __future__ import annotations

import base64
import html

from .tables import Run, env_line, headers, rows

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td.l { text-align: left; font-family: monospace; max-width: 260px;
  word-break: break-all; }
tr.baseline td { background: #f7f7f7; color: #555; } tr.ref td { font-weight: bold; }
.best { background: #eaf6ea; border: 1px solid #9c9; padding: 0.6em 1em; display: inline-block; }
.env { color: #555; font-size: 13px; } img { max-width: 100%; border: 1px solid #ddd; }
"""


def render(runs: list[Run], metric: str | None, png: bytes, best: str | None = None,
           title: str = "slimformer report") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if best is not None:
        parts.append(f"<p class='best'>Best recipe within the budget: <code>{html.escape(best or 'fp32')}</code></p>")
    for run in runs:
        parts.append(f"<h2>{html.escape(run.source)}</h2><p class='env'>{html.escape(env_line(run))}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers(metric)) + "</tr>")
        for row in rows(run, metric):
            cls = "baseline" if row[2] == "baseline" else ("ref" if row[1] == "-" else "")
            cells = "".join(f"<td class='l'>{html.escape(c)}</td>" if i < 4 else f"<td>{html.escape(c)}</td>"
                            for i, c in enumerate(row))
            parts.append(f"<tr class='{cls}'>{cells}</tr>")
        parts.append("</table>")
    data = base64.b64encode(png).decode()
    parts.append(f"<h2>Pareto front</h2><img alt='pareto' src='data:image/png;base64,{data}'>")
    parts.append("<p class='env'>Speedup: fp32 p50 / variant p50 from the same run, variants timed interleaved. "
                 "Peak MB: peak RSS above the interpreter baseline, each variant alone in a fresh process. "
                 "Grey rows: external baselines.</p></body></html>")
    return "\n".join(parts)
