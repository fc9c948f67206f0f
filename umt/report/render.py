"""Render a :class:`umt.report.Report` as Markdown and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
from typing import Any

from umt.report import figures
from umt.report.model import (
    LEARNED,
    Assessment,
    Report,
    Step,
    assess,
    bar_groups,
    count_metrics,
    curve_points,
    energy,
    other_metrics,
    percent_metrics,
    verdict_rule,
)

# The number a person looks for first, per kind of result.
HEADLINE = ("top1", "acc", "accuracy", "t2v_r1", "r1", "txt_r1", "qa_acc", "mc_acc")


def headline(step: Step) -> str:
    if step.status == "skipped":
        return step.reason or "skipped"
    if step.status == "provided":
        return f"given: {step.metadata.get('checkpoint') or step.metadata.get('dataset_json', '')}"
    if step.kind == "data":
        m = step.metadata
        return (f"{int(m.get('num_samples', 0))} samples in {int(m.get('num_shards', 0))} shards, "
                f"{int(m.get('num_failed', 0))} failed")
    if step.kind == "train":
        loss = step.metrics.get("final_loss")
        return (f"step {int(step.metadata.get('step', 0))}"
                + (f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))
    a = assess(step)
    if a is not None and a.value is not None:
        return f"{a.metric} {a.value:.2f} %{_chance_text(a)}: {a.verdict}"
    for key in HEADLINE:
        if key in step.metrics:
            return f"{key} {step.metrics[key]:.2f}"
    shown = [(k, v) for k, v in step.metrics.items() if k not in ("wall_hours", "gpu_hours")]
    return ", ".join(f"{k} {v:.3g}" for k, v in shown[:2]) or "done"


def lineage(report: Report) -> list[list[str]]:
    """Chains from the data to every final model or evaluation, as step names."""
    by_checkpoint = {s.metadata.get("checkpoint"): s for s in report.steps
                     if s.kind == "train" and s.status != "skipped" and s.metadata.get("checkpoint")}
    parent_of: dict[str, Step | None] = {}
    for s in report.steps:
        if s.status == "skipped" or s.kind == "data":
            continue
        key = s.metadata.get("model") if s.kind == "eval" else s.metadata.get("parent")
        parent_of[s.name] = by_checkpoint.get(key) if key else None
    parents = {p.name for p in parent_of.values() if p is not None}
    data = report.dataset.get("name", "data")
    chains = []
    for s in report.steps:
        if s.name not in parent_of or s.name in parents:
            continue
        chain, node = [s.name], parent_of[s.name]
        while node is not None and len(chain) < 10:
            chain.append(node.name)
            node = parent_of.get(node.name)
        chains.append([data] + chain[::-1])
    return chains


def _energy_rows(report: Report) -> list[tuple[Step, Any]]:
    return [(s, energy(s, report.gpu_power_watts, report.grid_g_per_kwh))
            for s in report.steps if s.kind in ("train", "eval") and s.status == "done"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _chance_text(a: Assessment) -> str:
    return f" (chance {a.chance:.3g} %)" if a.chance is not None else " (no chance level)"


PAPER_NOTE = ("the UMT paper's full-size model (ViT-L/16) on the real benchmark, for "
              "scale: not this run's model or data")


def glance(report: Report) -> list[tuple[Step, Assessment]]:
    """Every done evaluation with its headline metric, chance level, paper number, verdict."""
    out = []
    for s in report.steps:
        if s.kind == "eval" and s.status == "done":
            a = assess(s)
            if a is not None:
                out.append((s, a))
    return out


def _glance_row(s: Step, a: Assessment) -> list[str]:
    return [s.name, a.metric, "—" if a.value is None else f"{a.value:.2f} %",
            "—" if a.chance is None else f"{a.chance:.3g} % ({a.chance_basis})",
            "—" if a.threshold is None else f"{a.threshold:.3g} %", a.verdict,
            f"{a.paper:g} % ({a.paper_what})" if a.paper is not None else "—"]


GLANCE_HEADER = ["task", "metric", "ours", "chance", "learned at", "verdict",
                 "paper's full-size model (not ours)"]


def verdict_lines(report: Report) -> list[str]:
    """One line per evaluation: ``Evaluate: action recognition: learned (top1 71.50 % vs
    chance 25 %)`` (the terminal's summary says the same)."""
    return [f"{s.name}: {a.verdict} ({a.metric} "
            + ("—" if a.value is None else f"{a.value:.2f} %")
            + (f" vs chance {a.chance:.3g} %" if a.chance is not None else "") + ")"
            for s, a in glance(report)]


def recipe(report: Report) -> tuple[str, list[list[str]]]:
    """The run's data in one sentence and its training recipe, one row per trained stage:
    preset, overrides as planned, steps trained, architecture, frames, resolution."""
    d = report.dataset
    classes = d.get("classes") or []
    said = [f"{_fmt(d[k])} {what}" for k, what in (("num_samples", "clips"),
                                                   ("num_classes", "classes")) if d.get(k)]
    data = ", ".join(said) or "—"
    if classes:
        data += f" ({', '.join(map(str, classes[:8]))}{', ...' if len(classes) > 8 else ''})"
    if d.get("source"):
        data += f", from {d['source']}"
    rows = []
    for s in report.steps:
        if s.kind != "train" or s.status != "done":
            continue
        m = s.metadata
        overrides = [o for o in s.plan.get("overrides", []) if not o.startswith("data.")]
        rows.append([s.name, str(s.plan.get("config") or m.get("config", "")),
                     " ".join(overrides) or "—", _fmt(m.get("step", "")),
                     str(m.get("architecture", "")), _fmt(m.get("num_frames", "")),
                     _fmt(m.get("resolution", ""))])
    return data, rows


RECIPE_HEADER = ["stage", "preset (model size)", "overrides", "steps", "architecture", "frames", "resolution"]


def _points_note(s: Step) -> str:
    n = len(curve_points(s))
    if n < figures.MIN_TREND_POINTS:
        return (f"{s.name}: {n} logged loss point{'s' * (n != 1)}, too few to show a trend "
                "(log more often with train.log_every)")
    return f"{s.name}: {n} logged loss points"


# -- Markdown ---------------------------------------------------------------------------------
def render_markdown(report: Report) -> str:
    out = [f"# {report.title}", ""]
    out += ["| step | status | result |", "|---|---|---|"]
    out += [f"| {s.name} | {s.status} | {headline(s)} |" for s in report.steps]
    rows = glance(report)
    if rows:
        out += ["", "## At a glance", "", "| " + " | ".join(GLANCE_HEADER) + " |",
                "|" + "---|" * len(GLANCE_HEADER)]
        out += ["| " + " | ".join(_glance_row(s, a)) + " |" for s, a in rows]
        out += ["", f"Verdict: {verdict_rule()}", f"Paper's number: {PAPER_NOTE}."]
    data, recipe_rows = recipe(report)
    out += ["", "## Recipe and data", "", f"Data: {data}."]
    if recipe_rows:
        out += ["", "| " + " | ".join(RECIPE_HEADER) + " |", "|" + "---|" * len(RECIPE_HEADER)]
        out += ["| " + " | ".join(r) + " |" for r in recipe_rows]
    trains = [s for s in report.steps if s.kind == "train" and s.status == "done"]
    if trains:
        out += ["", "## Training loss", ""] + [f"- {_points_note(s)}" for s in trains]
    chains = lineage(report)
    if chains:
        out += ["", "## Lineage", ""] + [f"- {' → '.join(c)}" for c in chains]
    evals = [s for s in report.steps if s.kind == "eval" and s.status == "done"]
    if evals:
        out += ["", "## Evaluation", ""]
        for s in evals:
            percent = percent_metrics(s)
            values = ", ".join([f"{k} {_fmt(v)} %" for k, v in percent.items()]
                               + [f"{k} {_fmt(v)}" for k, v in other_metrics(s).items()])
            counts = ", ".join(f"{k} {_fmt(v)}" for k, v in count_metrics(s).items())
            out.append(f"- **{s.name}**: {values}" + (f" (counts: {counts})" if counts else ""))
    rows = _energy_rows(report)
    out += ["", "## Compute, energy and CO2", "",
            "| job | nodes × GPUs | job hours | GPU-hours | energy (kWh) | CO2 (kg) | source |",
            "|---|---|---|---|---|---|---|"]
    for s, e in rows:
        out.append(f"| {s.name} | {int(s.metadata.get('nodes', 0))} × "
                   f"{int(s.metadata.get('gpus_per_node', 0))} | "
                   f"{float(s.metrics.get('wall_hours') or 0):.3f} | {e.gpu_hours:.3f} | "
                   f"{e.energy_kwh:.3f} | {e.co2_kg:.3f} | {'NVML' if e.measured else 'estimate'} |")
    total = [sum(getattr(e, f) for _, e in rows) for f in ("gpu_hours", "energy_kwh", "co2_kg")]
    hours = sum(float(s.metrics.get("wall_hours") or 0) for s, _ in rows)
    out += [f"| **total** | | {hours:.3f} | {total[0]:.3f} | {total[1]:.3f} | {total[2]:.3f} | |",
            "",
            f"Estimates: GPUs × job time × {report.gpu_power_watts:g} W; "
            f"CO2 at {report.grid_g_per_kwh:g} g/kWh. CPU-only jobs count no GPU energy."]
    models = [s for s in report.steps if s.kind == "train" and s.status != "skipped"]
    if models:
        out += ["", "## Models", "", "| model | checkpoint | architecture | frames | resolution "
                "| step | config hash |", "|---|---|---|---|---|---|---|"]
        for s in models:
            m = s.metadata
            out.append(f"| {s.name} | `{m.get('checkpoint', '')}` | {m.get('architecture', '')} | "
                       f"{_fmt(m.get('num_frames', ''))} | {_fmt(m.get('resolution', ''))} | "
                       f"{_fmt(m.get('step', ''))} | {m.get('config_hash', '')} |")
    out += [""] + [f"> {note}" for note in report.notes]
    return "\n".join(out).rstrip() + "\n"


# -- HTML -------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
     max-width:1200px}
h1{font-size:22px;margin:0 0 12px} h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8} code{font-size:12px;word-break:break-all}
.done{color:#1a7f37;font-weight:600} .skipped{color:#888} .provided{color:#0550ae}
.chain{display:flex;flex-wrap:wrap;align-items:center;margin:6px 0}
.node{border:1px solid #9ab;border-radius:6px;padding:4px 10px;background:#f6fbff;font-size:13px}
.arrow{margin:0 8px;color:#678;font-size:18px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.note{color:#555;font-size:12px}
.learned{color:#1a7f37;font-weight:700} .at-chance{color:#b42318;font-weight:700}
.no-chance{color:#888}
"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    e = html.escape
    parts = [f"<h1>{e(report.title)}</h1>"]
    parts.append(_table(["step", "status", "result"], [
        [e(s.name), f'<span class="{e(s.status)}">{e(s.status)}</span>', e(headline(s))]
        for s in report.steps]))

    rows = glance(report)
    if rows:
        parts.append("<h2>At a glance</h2>")
        table = []
        for s, a in rows:
            cells = [e(c) for c in _glance_row(s, a)]
            css = "learned" if a.verdict == LEARNED else (
                "at-chance" if a.threshold is not None else "no-chance")
            cells[5] = f'<span class="{css}">{cells[5]}</span>'
            table.append(cells)
        parts.append(_table([e(h) for h in GLANCE_HEADER], table))
        parts.append(f'<p class="note">Verdict: {e(verdict_rule())}<br>Paper\'s number: '
                     f"{e(PAPER_NOTE)}.</p>")
    data, recipe_rows = recipe(report)
    parts.append(f"<h2>Recipe and data</h2><p>Data: {e(data)}.</p>")
    if recipe_rows:
        parts.append(_table([e(h) for h in RECIPE_HEADER],
                            [[e(c) if i != 2 else f"<code>{e(c)}</code>"
                              for i, c in enumerate(r)] for r in recipe_rows]))

    chains = lineage(report)
    if chains:
        parts.append("<h2>Lineage</h2>")
        for chain in chains:
            nodes = '<span class="arrow">&rarr;</span>'.join(
                f'<span class="node">{e(n)}</span>' for n in chain)
            parts.append(f'<div class="chain">{nodes}</div>')

    trains = [s for s in report.steps if s.kind == "train" and s.status == "done"]
    curves = figures.loss_curves([(s.name, curve_points(s)) for s in trains])
    if curves:
        parts += ["<h2>Training loss</h2>", _img(curves, "loss curves"),
                  '<p class="note">' + "<br>".join(e(_points_note(s)) for s in trains)
                  + "</p>"]

    evals = [s for s in report.steps if s.kind == "eval" and s.status == "done"]
    if evals:
        parts.append("<h2>Evaluation</h2>")
        groups = {g.name: g for g in bar_groups(report.steps)}
        parts.append(_img(figures.metric_bars(list(groups.values())), "evaluation metrics"))
        parts.append('<p class="note">Bars: percentages only (0-100); red line: the chance '
                     "level of that metric (top-k / R@k: k x the top-1 chance); purple "
                     "diamond: the paper's full-size model (not ours). Counts are in the "
                     "tables.</p>")
        for s in evals:
            g = groups.get(s.name)
            rows = [[e(k), e(_fmt(v)) + " %",
                     e(f"{g.chance[k]:.3g} %") if g and k in g.chance else "—"]
                    for k, v in percent_metrics(s).items()]
            rows += [[e(k), e(_fmt(v)), "—"] for k, v in other_metrics(s).items()]
            counts = count_metrics(s)
            parts.append(f"<p><b>{e(s.name)}</b></p>" + _table(["metric", "value", "chance"], rows)
                         + (_table(["count", "value"], [[e(k), e(_fmt(v))]
                                                        for k, v in counts.items()])
                            if counts else ""))
    if report.confusion.get("matrix"):
        parts += ["<h2>Confusion matrix (action recognition, all classes)</h2>",
                  _img(figures.confusion(report.confusion["matrix"],
                                         report.confusion.get("class_names") or []),
                       "confusion matrix")]

    rows = _energy_rows(report)
    parts.append("<h2>Compute, energy and CO2</h2>")
    table_rows = [[e(s.name), f"{int(s.metadata.get('nodes', 0))} &times; "
                   f"{int(s.metadata.get('gpus_per_node', 0))}",
                   f"{float(s.metrics.get('wall_hours') or 0):.3f}", f"{en.gpu_hours:.3f}",
                   f"{en.energy_kwh:.3f}", f"{en.co2_kg:.3f}",
                   "NVML" if en.measured else "estimate"] for s, en in rows]
    totals = [sum(float(s.metrics.get("wall_hours") or 0) for s, _ in rows)] + [
        sum(getattr(en, f) for _, en in rows) for f in ("gpu_hours", "energy_kwh", "co2_kg")]
    table_rows.append(["<b>total</b>", "", *(f"<b>{t:.3f}</b>" for t in totals), ""])
    parts.append(_table(["job", "nodes × GPUs", "job hours", "GPU-hours", "energy (kWh)",
                         "CO2 (kg)", "source"], table_rows))
    parts.append(_img(figures.energy_bars([(s.name, en.gpu_hours, en.co2_kg) for s, en in rows]),
                      "GPU-hours and CO2"))
    parts.append(f'<p class="note">Estimates: GPUs &times; job time &times; '
                 f'{report.gpu_power_watts:g} W per GPU; CO2 at {report.grid_g_per_kwh:g} g/kWh '
                 "of grid electricity. CPU-only jobs count no GPU energy. Jobs that report NVML "
                 "energy counters are marked NVML.</p>")

    if report.dataset:
        d = report.dataset
        parts.append("<h2>Data</h2>" + _table(["field", "value"], [[e(k), f"<code>{e(_fmt(v))}</code>"]
                                                          for k, v in d.items() if k != "classes"]))
    models = [s for s in report.steps if s.kind == "train" and s.status != "skipped"]
    if models:
        parts.append("<h2>Models</h2>")
        keys = ["checkpoint", "architecture", "num_frames", "resolution", "step", "config_hash",
                "parent", "output_dir"]
        parts.append(_table(["model", *keys], [
            [e(s.name), *(f"<code>{e(_fmt(s.metadata.get(k, '')))}</code>" for k in keys)]
            for s in models]))
    for note in report.notes:
        parts.append(f'<p class="note">{e(note)}</p>')
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{e(report.title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(p for p in parts if p) + "</body></html>\n")
