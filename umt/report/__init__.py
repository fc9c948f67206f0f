"""The run report: a Markdown summary and one self-contained HTML page.

    from umt.report import Report, Step, render_html, render_markdown
    report = Report(title="umt run", dataset={...}, steps=[Step(...), ...])
    Path("report.html").write_text(render_html(report))

The HTML has everything inline (CSS, matplotlib pictures as ``data:`` PNGs, no scripts, no
links to files): the KFP UI shows an HTML artifact in a sandboxed ``iframe srcdoc``, where
relative links and external files do not load. It shows, at a glance, each evaluation's
headline metric beside its chance level and the paper's full-size result with a verdict
(learned / at chance: :func:`umt.report.model.verdict_rule`), the run's recipe and data, the
loss curves (every logged point), percentage-only metric bars with chance marks, the
lineage of every model (data -> Stage 1 -> Stage 2 -> fine-tune -> evaluation), the confusion
matrix, and per job the GPU-hours, energy and CO2: measured when the stage reports NVML energy
(``energy_kwh`` in its summary), otherwise estimated as GPUs x time x ``gpu_power_watts``, times
``grid_g_per_kwh`` for CO2. No kfp here.
"""

from umt.report.model import Assessment, Energy, Report, Step, assess, energy
from umt.report.render import render_html, render_markdown

__all__ = ["Assessment", "Energy", "Report", "Step", "assess", "energy", "render_html",
           "render_markdown"]
