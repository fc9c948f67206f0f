"""``umt run <pipeline.py> --local``: the whole pipeline on this machine, through kfp.local.

    umt run pipelines/full.py --local                       # tiny models, synthetic videos
    umt run pipelines/full.py --local stage1_steps=10 input_videos=my/videos.csv

What happens:

1. the pipeline is compiled, and kfp.local runs the *compiled YAML* (SubprocessRunner, in this
   interpreter) -- the spec a cluster gets, task for task;
2. local settings replace the cluster defaults, and are printed: a local output folder instead
   of S3, ``tiny`` models, 2 CPU replicas per job (so DDP over gloo is exercised), and, when no
   input is given, synthetic videos (mp4 + manifest with labels and captions) that the real
   ``shard_videos`` step shards (one data set with every downstream task's columns);
3. each training task's PyTorchJob runs in the local PyTorchJob executor (processes + gloo):
   chosen because no KFP pod is around (``UMT_JOB_BACKEND=local``), not by a parameter;
4. caching is on (``--no-cache`` to rerun everything): a second run hits the cache for every
   task but the exit handler. kfp.local prints nothing for cache hits; we do.

kfp.local ignores kfp-kubernetes settings (secrets, field-path env), resource requests, display
names and s3:// pipeline roots; those are exercised by the compile tests instead.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from umt.pipeline import loader
from umt.pipeline import plan as planning

SYNTHETIC_VIDEOS = 32
# Local settings, applied to parameters the pipeline has and the user did not set.
LOCAL_SETTINGS = {
    "model_size": ("tiny", "CPU-sized models, random tiny CLIP teacher (offline)"),
    "nodes": (2, "2 replicas per pretraining job: DDP over gloo"),
    "downstream_nodes": (2, "2 replicas per fine-tune / evaluation job"),
    "gpus_per_node": (0, "no GPU: CPU jobs"),
    "node_pool": ("cpu", "the local executor's pool"),
    "samples_per_shard": (8, "several shards from a few videos"),
    # Demo-sized: the tiny presets (Stage 2: 30 steps, action fine-tune: 200) would take the
    # whole DAG past 15 minutes on 2 CPU cores. Stage 1 keeps its preset's 40 steps.
    "stage2_steps": (20, "demo-sized; 0 = the tiny preset's"),
    "finetune_steps": (20, "demo-sized, every fine-tune; 0 = the tiny presets'"),
    # The action preset logs every 10 steps: 2 points in 20 steps, no curve in the report.
    "finetune_overrides": (["train.log_every=2"], "a loss point every 2 steps, so the "
                                                 "report's fine-tune curves show a trend"),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def local_arguments(params: dict[str, dict[str, Any]], given: dict[str, Any], workdir: Path
                    ) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """(arguments for the local run, [(name, value, why)] of what we chose)."""
    args = dict(given)
    chosen: list[tuple[str, Any, str]] = []

    def choose(name: str, value: Any, why: str) -> None:
        if name in params and name not in given:
            args[name] = value
            chosen.append((name, value, why))

    choose("output_prefix", str(workdir / "outputs"), "a local folder instead of S3")
    for name, (value, why) in LOCAL_SETTINGS.items():
        choose(name, value, why)
    if "input_videos" in params and not given.get("input_videos") and not given.get(
            "existing_dataset"):
        manifest = _synthetic(workdir / "synthetic")
        choose("input_videos", str(manifest), f"{SYNTHETIC_VIDEOS} synthetic clips (4 motion "
                                              "classes; labels, captions, questions and "
                                              "caption candidates: every task's columns), "
                                              "sharded by the real step")
        choose("classes", str(manifest.parent / "classes.txt"), "the synthetic class order")
    # Without Stage 2, the tasks that start from it (or from their fine-tunes) cannot run.
    if "tasks" in params and args.get("run_stage2") is False and not args.get(
            "existing_stage2_checkpoint"):
        tasks = args.get("tasks", params["tasks"].get("default") or [])
        kept = [t for t in tasks if "stage2" not in _ancestors(t)]
        if kept != list(tasks):
            args["tasks"] = kept
            chosen.append(("tasks", kept, "run_stage2=false: only the tasks that do not start "
                                          "from Stage 2"))
    return args, chosen


def _ancestors(task: str) -> set[str]:
    """The stages a task's stages start from, transitively (from the stage catalogue)."""
    from umt import catalogue

    out: set[str] = set()
    todo = [s.parent for s in catalogue.STAGES.values() if s.task == task]
    while todo:
        name = todo.pop()
        if name and name not in out:
            out.add(name)
            todo.append(catalogue.STAGES[name].parent)
    return out


def local_package(package: Path, backoff: str = "1s") -> Path:
    """A copy of the compiled package for kfp.local: retries wait ``backoff`` (the compiled
    60 s suit a rescheduled pod, not a local process); loops run one iteration at a time (each
    shard part already uses every local CPU, and the progress shown here follows one task at a
    time); every task names the release image (tasks run as local processes, so no image is
    used; the compiled ``<version>-<sha>`` tag would make every commit a cache miss of every
    task). Everything else is the compiled spec."""
    import yaml

    from umt.launch.images import LAUNCHER_IMAGE, release_image

    docs = list(yaml.safe_load_all(package.read_text()))
    for comp in [docs[0]["root"], *docs[0].get("components", {}).values()]:
        for task in (comp.get("dag", {}).get("tasks") or {}).values():
            if "retryPolicy" in task:
                task["retryPolicy"]["backoffDuration"] = backoff
            if "iteratorPolicy" in task:
                task["iteratorPolicy"]["parallelismLimit"] = 1
    for executor in docs[0].get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = release_image(LAUNCHER_IMAGE)
    out = package.with_name(package.stem + "-local.yaml")
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _synthetic(folder: Path) -> Path:
    """Synthetic clips + a manifest with every downstream task's columns and the QA answer
    list (deterministic, so a rerun hits the cache); written once."""
    from umt.data.synthetic_tasks import ALL, write_task_dataset

    manifest = folder / "manifest.jsonl"
    if not manifest.exists():
        write_task_dataset(str(folder), SYNTHETIC_VIDEOS, ALL, num_frames=16, size=64)
    return manifest


@dataclass
class TaskRecord:
    key: str
    name: str
    status: str = "not run"  # ran | cache hit | failed | not run
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)  # output -> {uri, metadata}
    tail: list[str] = field(default_factory=list)


class _Console(io.TextIOBase):
    """Stands in for stdout while kfp.local runs: everything goes to the log file; the terminal
    gets one line per task event (and training progress), or everything with ``verbose``."""

    def __init__(self, real: Any, log_file: Any, tasks: dict[str, TaskRecord], verbose: bool):
        self.real, self.log, self.tasks, self.verbose = real, log_file, tasks, verbose
        self.pending = ""
        self.current: TaskRecord | None = None
        self.started = 0.0
        self.finished: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.real.flush()

    def say(self, text: str) -> None:
        self.real.write(text + "\n")
        self.real.flush()

    def _line(self, line: str) -> None:
        if self.verbose:
            self.say(line)
        m = re.search(r"Executing task '([^']+)'", line)
        if m:
            self.current = self.tasks.setdefault(m.group(1), TaskRecord(m.group(1), m.group(1)))
            self.started = time.monotonic()
            if not self.verbose:
                self.say(f"  ... {self.current.name}")
            return
        m = re.search(r"Task '([^']+)' finished with status (\w+)", line)
        if m:
            rec = self.tasks.setdefault(m.group(1), TaskRecord(m.group(1), m.group(1)))
            rec.seconds = time.monotonic() - self.started
            rec.status = "ran" if m.group(2) == "SUCCESS" else "failed"
            if not self.verbose:
                mark = "ok " if rec.status == "ran" else "FAILED"
                self.say(f"  {mark} {rec.name} ({rec.seconds:.0f} s)")
                if rec.status == "failed":
                    self.say("      " + "\n      ".join(_error_lines(rec.tail)))
                    self.say(f"      (the task's whole log: {self.log.name})")
            self.current = None
            return
        m = re.search(r"Pipeline '([^']+)' finished with status (\w+)", line)
        if m:
            self.finished = m.group(2)
            return
        if self.current is not None and line.startswith("    "):
            self.current.tail = (self.current.tail + [line.strip()])[-60:]
            progress = re.search(r"(step \d+/\d+ loss.*)", line)
            if progress and not self.verbose:
                self.say(f"      {progress.group(1)[:110]}")


def _error_lines(tail: list[str], limit: int = 20) -> list[str]:
    """What a failed task said: the exception after its traceback's last frame, or the end."""
    starts = [i for i, line in enumerate(tail) if line.startswith("Traceback (most recent")]
    if not starts:
        return tail[-limit:]
    frames = [i for i, line in enumerate(tail) if line.startswith('File "') and i > starts[-1]]
    rest = tail[(frames[-1] + 2 if frames else starts[-1] + 1):]
    return [line for line in rest if not set(line) <= set("^~ ")][:limit]


class _Events(logging.Handler):
    """kfp.local's messages outside its own logger context (cache hits, skips)."""

    def __init__(self, console: _Console, log_file: Any):
        super().__init__(logging.INFO)
        self.console, self.log = console, log_file
        self.cache_keys: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.log.write(f"{record.levelname} {record.name}: {message}\n")
        m = re.match(r"Task (\S+) cache hit \(key=([0-9a-f]+)\)", message)
        if m:
            key = m.group(1)
            self.cache_keys[key] = m.group(2)
            rec = self.console.tasks.setdefault(key, TaskRecord(key, key))
            rec.status = "cache hit"
            self.console.say(f"  ok  {rec.name} (cache hit)")
        elif record.levelno >= logging.ERROR:
            self.console.say(f"  {message}")


def _outputs_from(entry: dict[str, Any]) -> dict[str, Any]:
    """Artifacts of an executor_output.json / cache entry -> {name: {uri, metadata}}."""
    out = {}
    for name, value in (entry.get("artifacts") or {}).items():
        items = value.get("artifacts", []) if isinstance(value, dict) else []
        if items:
            out[name] = {"uri": items[0].get("uri", ""), "metadata": items[0].get("metadata", {})}
    for name, value in entry.items():  # cache entries: {name: {__kfp_artifact__, uri, ...}}
        if isinstance(value, dict) and value.get("__kfp_artifact__"):
            out[name] = {"uri": value.get("uri", ""), "metadata": value.get("metadata") or {}}
    return out


def collect_outputs(tasks: dict[str, TaskRecord], run_dir: Path | None, cache_root: Path,
                    cache_keys: dict[str, str]) -> None:
    for key, rec in tasks.items():
        entry: dict[str, Any] = {}
        if rec.status == "cache hit" and key in cache_keys:
            hits = sorted(cache_root.glob(f"{cache_keys[key]}*.json"))
            if hits:
                entry = json.loads(hits[0].read_text())
        elif run_dir is not None and (run_dir / key / "executor_output.json").exists():
            entry = json.loads((run_dir / key / "executor_output.json").read_text())
        rec.outputs = _outputs_from(entry)


def result_of(rec: TaskRecord) -> str:
    """One line about what a task produced."""
    outs = {k: v["metadata"] for k, v in rec.outputs.items()}
    for meta in outs.values():
        if meta.get("skipped") is True:
            return f"skipped: {meta.get('reason', '')}"
    if "dataset" in outs and "num_samples" in outs["dataset"]:
        d = outs["dataset"]
        return f"{int(d['num_samples'])} clips in {int(d['num_shards'])} shards"
    if "plan" in outs:
        return f"jobs: {', '.join(outs['plan'].get('jobs', [])) or '-'}"
    if "model" in outs and outs["model"].get("checkpoint"):
        m = outs["model"]
        loss = outs.get("metrics", {}).get("final_loss")
        return (f"step {int(m.get('step', 0))}" + (f", loss {loss:.4f}" if loss is not None
                                                   else "") + f" -> {m['checkpoint']}")
    if "metrics" in outs and outs["metrics"]:
        shown = [(k, v) for k, v in outs["metrics"].items() if k not in ("wall_hours",
                                                                          "gpu_hours")]
        return ", ".join(f"{k} {v:.3g}" for k, v in shown[:4])
    if "html" in rec.outputs:
        return rec.outputs["html"]["uri"]
    return ""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first (``ps``: Linux and macOS)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True,
                         text=True, check=False).stdout
    children: dict[int, list[int]] = {}
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def stop_children(grace: float = 10.0) -> int:
    """SIGTERM every process below us (task processes and the jobs they launched), then
    SIGKILL what is left after ``grace`` seconds; returns how many there were."""
    victims = _descendants(os.getpid())
    for pid in victims:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in victims):
        time.sleep(0.2)
    for pid in victims:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return len(victims)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our own children: reap them
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@dataclass
class LocalRun:
    ok: bool
    tasks: dict[str, TaskRecord]
    workdir: Path
    run_dir: Path | None
    report: str | None
    seconds: float
    arguments: dict[str, Any]


def run_local(pipeline_file: str, items: Sequence[str] = (), *, workdir: str = "runs/pipelines",
              function: str | None = None, cache: bool = True, verbose: bool = False,
              out: Any = None) -> LocalRun:
    out = out or sys.stdout
    started = time.monotonic()
    pipeline = loader.load_pipeline(pipeline_file, function)
    name = pipeline.name
    base = Path(workdir).resolve() / name
    package = loader.compile_pipeline(pipeline, base / "pipeline.yaml")
    spec = loader.read_spec(package)
    params = loader.parameters(spec)
    given = loader.parse_arguments(items, params)
    arguments, chosen = local_arguments(params, given, base)
    missing = [k for k, p in params.items() if p["default"] is None and k not in arguments]
    if missing:
        raise loader.PipelineError(f"pipeline {name} needs {', '.join(missing)}: pass them as "
                                   "name=value")
    out.write(f"pipeline {name}: compiled to {package}\nlocal settings:\n")
    package = local_package(package)
    out.write(f"  retries wait 1 s here, not the compiled 60 s, loops run one iteration at a "
              f"time; images unused ({package.name})\n")
    for key, value, why in chosen:
        out.write(f"  {key}={_shown(value)}    ({why})\n")
    for key, value in given.items():
        out.write(f"  {key}={_shown(value)}    (given)\n")

    run_id = f"local-{datetime.now():%Y%m%d-%H%M%S}"
    # Inherited by every task process (kfp.local ignores kfp-kubernetes env settings); not task
    # inputs, so they do not enter the cache keys.
    env = {planning.BACKEND_ENV: "local", planning.LOCAL_JOBS_ENV: str(base / "jobs"),
           "KFP_RUN_ID": run_id, "PYTHONUNBUFFERED": "1"}  # task output as it happens
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return _run(pipeline, package, spec, arguments, base, run_id, cache, verbose, out,
                    started)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(pipeline: Any, package: Path, spec: dict[str, Any], arguments: dict[str, Any],
         base: Path, run_id: str, cache: bool, verbose: bool, out: Any,
         started: float) -> LocalRun:
    from kfp import components, local

    name = pipeline.name
    root = base / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=cache, raise_on_error=False)
    names = loader.task_names(spec)
    tasks = {key: TaskRecord(key, display) for key, display in names.items()}
    base.mkdir(parents=True, exist_ok=True)
    log_path = base / f"{run_id}.log"
    out.write(f"running {len(tasks)} tasks (run {run_id}; full log: {log_path})\n")
    before = set(root.glob(f"{name}-*")) if root.exists() else set()
    with open(log_path, "w") as log_file:
        console = _Console(out, log_file, tasks, verbose)
        events = _Events(console, log_file)
        root_logger = logging.getLogger()
        old_level, real_stdout = root_logger.level, sys.stdout
        root_logger.addHandler(events)
        root_logger.setLevel(logging.INFO)
        sys.stdout = console
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
        try:
            with warnings.catch_warnings():
                # kfp.local says once per task that display names and resources do nothing
                # locally (they are for the cluster); the log file keeps them.
                warnings.simplefilter("ignore")
                components.load_component_from_file(str(package))(**arguments)
        except KeyboardInterrupt:
            # kfp.local leaves the running task's process alone; stop it (its launcher deletes
            # its job, i.e. stops the replicas), as Terminate does on a cluster.
            stopped = stop_children()
            console.say(f"  interrupted: stopped {stopped} task processes")
            raise
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            sys.stdout = real_stdout
            root_logger.removeHandler(events)
            root_logger.setLevel(old_level)
            console.flush()
    new = sorted(set(root.glob(f"{name}-*")) - before)
    run_dir = new[-1] if new else None
    collect_outputs(tasks, run_dir, root / ".kfp_cache", events.cache_keys)
    report = next((rec.outputs["html"]["uri"] for rec in tasks.values() if "html" in rec.outputs),
                  None)
    if report and Path(report).exists():
        # The artifact file has no extension (kfp names it after the output); a copy that a
        # browser opens as HTML, outside the pipeline root.
        copy = base / "report.html"
        copy.write_bytes(Path(report).read_bytes())
        report = str(copy)
    ok = console.finished == "SUCCESS"
    return LocalRun(ok, tasks, base, run_dir, report, time.monotonic() - started, arguments)


def print_results(run: LocalRun, out: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, width=160)
    table = Table("step", "status", "time", "result", title="results")
    for rec in run.tasks.values():
        skipped = any(o["metadata"].get("skipped") is True for o in rec.outputs.values())
        status = "off" if skipped and rec.status == "ran" else rec.status
        table.add_row(rec.name, status, f"{rec.seconds:.0f} s" if rec.seconds else "",
                      result_of(rec))
    console.print(table)
    verdict = "succeeded" if run.ok else "FAILED"
    console.print(f"pipeline {verdict} in {run.seconds:.0f} s; outputs under {run.workdir}")
    if run.report:
        console.print(f"report: {run.report}")
