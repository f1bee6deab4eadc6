"""`ecomtune bench report`: one self-contained HTML file from one or more results files.

Before/after per task and per attribute as bar charts, then per-example cards (the images, the prompt, the
prediction, the truth) with a switch that shows only the failures. Everything is inline (styles, a few lines of
script, images as small JPEG data URIs), so the file can be mailed or attached to a ticket and opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ecomtune.tasks.registry import TASKS, example_passed, headline_metric, headline_score

THUMBNAIL = 160  # pixels on the long side of an embedded image

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .6em;text-align:left;vertical-align:middle}th{border-bottom:1px solid #999}
.bar{display:inline-block;height:.9em;vertical-align:middle;margin-right:.4em}
.r0{background:#9ab}.r1{background:#2a7}.r2{background:#d84}.r3{background:#86c}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em;margin:.6em 0}
.card.fail{border-left:6px solid #c33}.card.pass{border-left:6px solid #2a7}
.card img{height:96px;margin-right:.3em;border:1px solid #ddd}
.card pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em;margin:.3em 0;font-size:.85em}
.only-failures .card.pass{display:none}.muted{color:#777}
"""
SCRIPT = ("document.getElementById('failures').addEventListener('change',"
          "e=>document.body.classList.toggle('only-failures',e.target.checked));")


def _thumbnail(path: str) -> str | None:
    """A JPEG data URI of the image at `path` as the model saw it (`load_rgb`: EXIF orientation, transparency on
    white), or None when it cannot be read (moved or damaged since the bench ran)."""
    from ecomtune.data.images.load import UNREADABLE, load_rgb

    try:
        image = load_rgb(path)
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    except UNREADABLE:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar(value: float, index: int) -> str:
    width = max(0.0, min(1.0, value)) * 200
    return f'<span class="bar r{index % 4}" style="width:{width:.0f}px"></span>{value:.3f}'


def _score_rows(label_results: list[tuple[str, dict]]) -> str:
    tasks = list(dict.fromkeys(t for _, results in label_results for t in results["tasks"]))
    header = "".join(f"<th>{html.escape(label)}</th>" for label, _ in label_results)
    rows = []
    for task in tasks:
        metric = headline_metric(task)
        cells = []
        for index, (_, results) in enumerate(label_results):
            value = headline_score(results, task)
            cells.append(f"<td>{_bar(value, index)}</td>" if value is not None else '<td class="muted">-</td>')
        rows.append(f'<tr data-task="{html.escape(task)}"><td>{html.escape(task)}</td><td>{metric}</td>'
                    f"{''.join(cells)}</tr>")
    return f"<table><tr><th>task</th><th>metric</th>{header}</tr>{''.join(rows)}</table>"


def _group_rows(label_results: list[tuple[str, dict]]) -> str:
    parts = []
    tasks = list(dict.fromkeys(t for _, results in label_results for t in results["tasks"]))
    for task, group in ((t, g) for t in tasks if t in TASKS for g in TASKS[t].groups):
        names = list(dict.fromkeys(name for _, results in label_results
                                   for name in results["tasks"].get(task, {}).get("scores", {}).get(group, {})))
        if not names:
            continue
        header = "".join(f"<th>{html.escape(label)}</th>" for label, _ in label_results)
        rows = []
        for name in names:
            cells = []
            for index, (_, results) in enumerate(label_results):
                row = results["tasks"].get(task, {}).get("scores", {}).get(group, {}).get(name)
                value = row.get("accuracy") if isinstance(row, dict) else row
                extra = (f' <span class="muted">(majority {row["majority_baseline"]:.3f}, random '
                         f'{row.get("random_baseline", 0.0):.3f})</span>'
                         if isinstance(row, dict) and "majority_baseline" in row else "")
                cells.append(f"<td>{_bar(value, index)}{extra}</td>" if isinstance(value, (int, float)) else
                             '<td class="muted">-</td>')
            rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
        parts.append(f"<h3>{html.escape(task)} per {group.removeprefix('by_')}</h3>"
                     f"<table><tr><th>{group.removeprefix('by_')}</th>{header}</tr>{''.join(rows)}</table>")
    return "".join(parts)


def _card(task: str, example: dict[str, Any]) -> str:
    passed = example_passed(task, example)
    images = "".join(f'<img alt="{html.escape(Path(p).name)}" src="{uri}">' if (uri := _thumbnail(p)) else
                     f'<span class="muted">[{html.escape(Path(p).name)}: not found]</span>'
                     for p in example.get("image_paths", []))
    truth = json.dumps(example.get("reference", {}), ensure_ascii=False, indent=1)
    return (f'<div class="card {"pass" if passed else "fail"}" data-id="{html.escape(str(example.get("id")))}" '
            f'data-task="{html.escape(task)}"><b>{html.escape(str(example.get("id")))}</b> '
            f'{"right" if passed else "wrong"}<div>{images}</div>'
            f'<div>prompt</div><pre class="prompt">{html.escape(str(example.get("prompt", "")))}</pre>'
            f'<div>prediction</div><pre class="prediction">{html.escape(str(example.get("prediction", "")))}</pre>'
            f'<div>truth</div><pre class="truth">{html.escape(truth)}</pre></div>')


def render_report(label_results: list[tuple[str, dict]], examples_per_task: int = 50) -> str:
    """The HTML page for `(label, results)` pairs, oldest first; example cards come from the last one."""
    label, last = label_results[-1]
    sources = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(str(r['model'].get('spec')))} "
                      f"({html.escape(str(r.get('created_at', '')))})</li>" for name, r in label_results)
    cards = []
    for task, entry in last["tasks"].items():
        examples = entry.get("examples", [])
        # failures first, so the switch that shows only failures has cards to show
        shown = sorted(examples, key=lambda e: example_passed(task, e))[:examples_per_task]
        failures = sum(not example_passed(task, e) for e in examples)
        cards.append(f"<h3>{html.escape(task)}: {failures} of {len(entry.get('examples', []))} wrong"
                     f"{f' ({len(shown)} shown, failures first)' if len(shown) < len(examples) else ''}"
                     f"</h3>{''.join(_card(task, e) for e in shown)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ecomtune bench report</title>"
            f"<style>{STYLE}</style></head><body><h1>ecomtune bench report</h1><ul>{sources}</ul>"
            f"<h2>Scores per task</h2>{_score_rows(label_results)}<h2>Per attribute</h2>{_group_rows(label_results)}"
            f"<h2>Examples: {html.escape(label)}</h2><label><input type='checkbox' id='failures'> "
            f"only failures</label>{''.join(cards)}<script>{SCRIPT}</script></body></html>")


def labels(paths: list[Path]) -> list[str]:
    """A column label per results file: its name, with its folder where two files share a name."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{stem}" if stems.count(stem) > 1 else stem for p, stem in zip(paths, stems,
                                                                                                 strict=True)]


def write_report(paths: list[Path], out: Path, examples_per_task: int = 50) -> Path:
    """Read the results files (checked as `bench compare` checks them) and write the report atomically."""
    from ecomtune.bench.result_tables import load_results
    from ecomtune.runs.file_modes import write_text_atomic

    label_results = [(label, load_results(Path(p))) for label, p in zip(labels(paths), paths, strict=True)]
    write_text_atomic(Path(out), render_report(label_results, examples_per_task))
    return Path(out)
