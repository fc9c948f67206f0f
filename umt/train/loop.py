"""The one training loop every stage runs on (Stage 1, Stage 2, every fine-tune).

A stage module holds only what is its own -- its config schema and a :class:`Stage`:

    STAGE = Stage(name="stage1", build_models=..., build_loader=..., forward_loss=...)
    def main(config, overrides): return train(STAGE, load_config(Stage1Config, "stage1", config, overrides))

and this module does the rest, once: process group and device, the run lease (one writer per
output folder), resume from the newest readable checkpoint (weights, optimizer, schedule
position, every rank's RNG, the data position) with a check that all ranks agree on the step,
DDP, gradient accumulation, the non-finite guard, the optimizer step and LR schedule (its
length: ``train.epochs`` over the loader's epoch at the actual global batch, or ``train.steps``;
``umt.configs.schedule``, logged and in ``summary.json`` as ``schedule``), metrics
averaged over ranks in ``metrics.jsonl``, periodic evaluation with a best checkpoint, periodic
checkpoints, a checkpoint on SIGTERM (``umt.runtime.preemption``: all ranks stop at the same
step, then the process exits for the restart) and ``summary.json``.

Stage hooks (``ctx`` is the :class:`Context` below):

* ``build_models(cfg, device) -> Models``: the trained module (optimised, DDP-wrapped,
  checkpointed) and frozen helpers (the CLIP teacher: never optimised, saved or wrapped).
* ``build_loader(cfg, ctx, start) -> iterator`` of batches, positioned at micro-batch
  ``start`` (= optimizer step x ``train.accum_steps``), with ``epoch_steps`` (batches per rank
  in one epoch) for configs in ``train.epochs``. Built before the model is wrapped.
* ``forward_loss(ctx, batch, step) -> (loss, metrics)``: the scalar to minimise for one
  micro-batch and a dict of scalar tensors to log (averaged over the log interval and ranks).
  ``ctx.micro`` is the micro-batch index within the step.
* optional ``param_groups(cfg, model) -> groups`` (default: weight decay on matrices only),
  ``evaluate(ctx, step) -> metrics`` (every ``train.eval_every`` steps and at the end; with
  ``train.best_metric`` the best checkpoint is kept too), ``summary(ctx) -> dict``,
  ``flops(ctx, batch) -> float``: model FLOPs of one micro-batch on this rank
  (``umt.train.flops``); with it ``metrics.jsonl`` gets ``tflops`` (achieved per device) and
  ``mfu`` (of the GPU's dense bf16 peak; null on CPUs and unknown devices).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from umt.configs import schedule as schedules
from umt.configs import to_yaml
from umt.models.checkpoint import misfit_message, state_dict_misfit
from umt.runtime import checkpoint, distributed, preemption
from umt.runtime.common import NonFiniteGuard, RunFiles, finite_or_none, setup_logging
from umt.runtime.lease import RunLease
from umt.seeds import derive_seed
from umt.train.flops import peak_tflops, throughput
from umt.train.optim import build_optimizer, build_scheduler, param_groups, scaled_lrs

log = logging.getLogger("umt.train")


@dataclass
class Models:
    model: nn.Module  # trained: optimizer, DDP, checkpoints
    frozen: dict[str, nn.Module] = field(default_factory=dict)  # e.g. the teacher
    ddp_kwargs: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. a tokenizer -> Context.state


@dataclass
class Stage:
    name: str
    build_models: Callable[[Any, torch.device], Models]
    build_loader: Callable[[Any, "Context", int], Iterator[dict]]
    forward_loss: Callable[["Context", dict, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    param_groups: Optional[Callable[[Any, nn.Module], list[dict]]] = None
    evaluate: Optional[Callable[["Context", int], dict[str, float]]] = None
    summary: Optional[Callable[["Context"], dict[str, Any]]] = None
    flops: Optional[Callable[["Context", dict], float]] = None


@dataclass
class Context:
    """What a stage's hooks see of the running loop."""

    cfg: Any
    dist: distributed.DistInfo
    device: torch.device
    raw: nn.Module  # the trained module itself
    model: nn.Module  # the same, wrapped for the forward pass (DDP and/or compiled)
    frozen: dict[str, nn.Module]
    global_batch: int  # samples per optimizer step, all ranks and micro-batches
    micro_batch: int = 0  # samples per micro-batch over all ranks (batch_size x world size)
    micro: int = 0  # index of the current micro-batch within the step
    loader: Any = None
    state: dict[str, Any] = field(default_factory=dict)  # a stage's own per-run state

    def step_seed(self, purpose: str, step: int) -> int:
        """A seed for ``purpose`` at this step, the same on every rank: draw noise for the
        step's whole global batch (every rank and micro-batch) from it and take
        :meth:`batch_rows`, so a sample's noise does not depend on how the batch is split over
        processes and micro-batches."""
        return derive_seed(purpose, self.cfg.train.seed, step)

    def batch_rows(self, batch_size: Optional[int] = None) -> slice:
        """This rank's rows of the current micro-batch within the step's global batch (of
        ``batch_size`` per rank and micro-batch; default ``train.batch_size``)."""
        b = batch_size or self.cfg.train.batch_size
        first = (self.micro * self.dist.world_size + self.dist.rank) * b
        return slice(first, first + b)

    def global_rows(self, batch_size: Optional[int] = None) -> int:
        """Rows of the step's global batch at ``batch_size`` per rank and micro-batch."""
        return (batch_size or self.cfg.train.batch_size) * self.dist.world_size * self.cfg.train.accum_steps


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], uri: str) -> None:
    """A resumed checkpoint must fit the configured model: say which shapes differ."""
    bad, missing, unexpected = state_dict_misfit(state, model.state_dict(), theirs="checkpoint",
                                                 ours="config")
    message = misfit_message(
        f"the checkpoint {uri} does not fit the configured model (did the model config change "
        f"since it was written? use another train.output_dir for a new model):",
        [("shapes differ", bad), ("missing in the checkpoint", missing),
         ("not in the model", unexpected)], limit=10)
    if message:
        raise ValueError(message)


def apply_gradients(model: nn.Module, optimizer: torch.optim.Optimizer,
                    clip_grad: Optional[float]) -> tuple[torch.Tensor, bool]:
    """The update after the backward pass(es): global gradient norm (clipped to ``clip_grad``
    when set), the optimizer step when the norm is finite, gradients cleared.

    Returns ``(grad_norm, finite)``. DDP has averaged the gradients, so every rank sees the same
    norm and takes the same decision; a NaN/inf loss on any rank makes it non-finite. One host
    sync per step (the finite check). Without clipping only the norm is computed: clipping to
    infinity would multiply every gradient by 1, a wasted pass over all of them.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if clip_grad:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    else:
        grad_norm = torch.nn.utils.get_total_norm(grads)
    finite = bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


def _restore(state: dict, ctx: Context, optimizer, start: int) -> None:
    ctx.raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rngs = state.get("rng")
    if isinstance(rngs, list) and len(rngs) == ctx.dist.world_size:
        checkpoint.set_rng_state(rngs[ctx.dist.rank], ctx.device)
    else:
        log.warning("checkpoint has RNG states for %s ranks, this run has %d: reseeding",
                    len(rngs) if isinstance(rngs, list) else "?", ctx.dist.world_size)
        torch.manual_seed(derive_seed("reseed", ctx.cfg.train.seed, start, ctx.dist.rank))


class _Meter:
    """Means of logged scalars over the steps since the last log, kept on the device (no host
    sync in the hot loop)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = torch.as_tensor(v).detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] += 1

    def take(self) -> dict[str, torch.Tensor]:
        out = {k: v / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, defaultdict(int)
        return out


def train(stage: Stage, cfg: Any) -> dict[str, Any]:
    tc = cfg.train
    preemption.grace_s()  # a bad UMT_SIGTERM_GRACE_S fails now, not when the node goes away
    dist = distributed.setup(tc.device)
    setup_logging(dist.rank)
    device = dist.device
    lease = RunLease(tc.output_dir, tc.lease_ttl_s).acquire() if dist.is_main else None
    try:
        return _train(stage, cfg, dist, device, lease)
    finally:
        if lease is not None:
            lease.release()
        distributed.cleanup()


def _train(stage: Stage, cfg: Any, dist: distributed.DistInfo, device: torch.device,
           lease: Optional[RunLease]) -> dict[str, Any]:
    tc = cfg.train
    run = _Run(stage, cfg, dist, device)  # models, optimizer
    # Before anything is written: the resume step, the loader there, the schedule in steps
    # (train.epochs need the loader's epoch); then config.yaml, metrics.jsonl.
    run.resume()
    run.start_model()  # DDP / compile
    steps = run.schedule.steps
    end = min(steps, tc.stop_at) if tc.stop_at else steps
    bar = tqdm(total=steps, initial=run.start, disable=not dist.is_main, desc=stage.name,
               unit="step")
    # From here on SIGTERM is a request to checkpoint and stop (before, there is nothing new
    # to save, and the default action ends the process at once).
    with preemption.on_sigterm():
        for step in range(run.start, end):
            if lease is not None:
                lease.check()
            grad_norm = run.train_step(step)
            bar.update(1)
            done = step + 1
            if done % tc.log_every == 0 or done == end:
                run.log_step(done, grad_norm, bar)
            if stage.evaluate is not None and tc.eval_every is not None and (
                    done == end or (tc.eval_every > 0 and done % tc.eval_every == 0)):
                run.evaluate(done)
            if done % tc.ckpt_every == 0 or done == end:
                run.save(done)
            if done < end:  # at the end the run just finishes: its checkpoint is written
                run.stop_if_sigterm(done)
    bar.close()
    return run.finish(end)


class _Run:
    """One training run's state and its pieces, in the order :func:`_train` calls them."""

    def __init__(self, stage: Stage, cfg: Any, dist: distributed.DistInfo, device: torch.device):
        """Models and optimizer, and the :class:`Context` the hooks see (the LR schedule comes
        with the loader, in :meth:`resume`: its length may be in epochs)."""
        tc = cfg.train
        self.stage, self.cfg, self.dist, self.device = stage, cfg, dist, device
        # The same seed on every rank while building, so random (test/demo) weights agree; then
        # a per-rank stream for stochastic depth and dropout.
        torch.manual_seed(tc.seed)
        self.models = stage.build_models(cfg, device)
        raw = self.models.model.to(device)
        torch.manual_seed(derive_seed("rank", tc.seed, dist.rank))

        micro_batch = tc.batch_size * dist.world_size
        self.global_batch = micro_batch * tc.accum_steps
        self.lr, self.min_lr, self.warmup_lr = scaled_lrs(cfg.optim, self.global_batch)
        groups = (stage.param_groups(cfg, raw) if stage.param_groups
                  else param_groups(raw, cfg.optim.weight_decay))
        self.optimizer = build_optimizer(groups, cfg.optim, self.lr, device)
        self.schedule: Optional[schedules.Schedule] = None
        self.scheduler = None
        self.ctx = Context(cfg, dist, device, raw, raw, self.models.frozen, self.global_batch,
                           micro_batch, state=dict(self.models.extras))
        self.writer = checkpoint.CheckpointWriter(tc.output_dir, tc.keep_last)
        self.start, self.last_ckpt = 0, ""
        self.saved_step = -1  # the step of this run's newest checkpoint, on every rank
        self.sigterm_budget_s, self.sigterm_budget_from = preemption.budget()
        self.save_s, self.warned_budget = 0.0, False
        self.guard, self.meter = NonFiniteGuard(tc.max_nonfinite), _Meter()
        self.last_logged: dict[str, Any] = {}
        self.eval_metrics: dict[str, Any] = {}
        self.best: Optional[dict[str, Any]] = None
        self.files: Optional[RunFiles] = None

    def resume(self) -> None:
        """Continue from the newest readable checkpoint (every rank reads it: each restores its
        own RNG state), agree on the step over ranks, then open the run files.

        Before anything is written, so a config that does not fit the checkpoint fails with
        config.yaml and metrics.jsonl untouched.
        """
        tc, dist = self.cfg.train, self.dist
        if not tc.resume and dist.is_main and checkpoint.list_steps(tc.output_dir):
            raise ValueError(f"train.resume=false but {tc.output_dir} already holds checkpoints: "
                             f"use another train.output_dir (nothing is overwritten)")
        state = checkpoint.load_latest(tc.output_dir) if tc.resume else None
        old_schedule, uri = None, ""
        if state is not None:
            _check_shapes(self.ctx.raw, state["model"], state["uri"])
            self.start, self.last_ckpt, uri = state["step"], state["uri"], state["uri"]
            _restore(state, self.ctx, self.optimizer, self.start)
            self.writer.adopt(self.start, state.get("lineage"))
            old_schedule = state.get("scheduler") or None
            log.info("resumed from step %d of %s", self.start, tc.output_dir)
        del state
        self.start = distributed.agree_on_step(self.start, dist)
        self.ctx.loader = self.stage.build_loader(self.cfg, self.ctx, self.start * tc.accum_steps)
        self._build_schedule()
        if self.start > self.schedule.steps:
            sched = self.schedule
            length = (f"train.steps={sched.steps}" if sched.steps_from == "train.steps" else
                      f"train.epochs={sched.epochs:g} make {sched.steps} steps here "
                      f"({sched.describe()})")
            raise ValueError(f"{uri or tc.output_dir} is at step {self.start} but {length}: "
                             f"raise train.steps / train.epochs to continue this run, or use "
                             f"another output_dir")
        # The schedule follows this run's config (steps, warmup, lr, world size); a resumed run
        # restores its position in it, not the old shape.
        if old_schedule and old_schedule.get("t_initial") != self.scheduler.t_initial:
            log.warning("the LR schedule changed since the checkpoint; following this config")
        self.files = RunFiles(tc.output_dir, enabled=dist.is_main)
        self.files.write_config(self.cfg)
        self.files.resume(self.start)
        self.scheduler.step_update(self.start)
        self.best = self.writer.best_info() if self.start else None

    def _build_schedule(self) -> None:
        """The run's length in steps (``umt.configs.schedule``: ``train.epochs`` x the loader's
        epoch at this global batch, unless ``train.steps`` says) and the LR schedule over it.

        A loader reports its epoch as ``epoch_steps``, batches per rank (one pass over its
        data at ``train.batch_size`` x world size, or ``data.epoch_steps``); an optimizer step
        takes ``train.accum_steps`` of them."""
        tc, ctx = self.cfg.train, self.ctx
        epoch_batches = getattr(ctx.loader, "epoch_steps", None)
        samples = epoch_batches * ctx.micro_batch if epoch_batches else None
        self.schedule = schedules.resolve(tc, self.cfg.optim, global_batch=self.global_batch,
                                          samples_per_epoch=samples)
        log.info("%s schedule: %s", self.stage.name, self.schedule.describe())
        self.scheduler = build_scheduler(self.optimizer, self.schedule.steps,
                                         self.schedule.warmup_steps, self.min_lr, self.warmup_lr)

    def start_model(self) -> None:
        """Wrap the model (DDP across ranks, ``torch.compile``) and start the first log
        interval (the loader is at the resume step's micro-batch already)."""
        tc, dist, ctx, raw = self.cfg.train, self.dist, self.ctx, self.ctx.raw
        if dist.world_size > 1:  # fixed buffers (position tables) never change: no broadcast
            ctx.model = DDP(raw, device_ids=[dist.local_rank] if self.device.type == "cuda" else None,
                            broadcast_buffers=False, **self.models.ddp_kwargs)
        if tc.compile:  # frozen helpers too: the teacher costs about as much as the student
            ctx.model = torch.compile(ctx.model)
            ctx.frozen = {k: torch.compile(v) for k, v in ctx.frozen.items()}
        n_params = sum(p.numel() for p in raw.parameters())
        log.info("%s: %s (%.1fM params), global batch %d (%d x %d ranks x %d accum), lr %.2e, "
                 "steps %d -> %d", self.stage.name, type(raw).__name__, n_params / 1e6,
                 self.global_batch, tc.batch_size, dist.world_size, tc.accum_steps, self.lr,
                 self.start, self.schedule.steps)
        if self.stage.flops is not None:
            log.info("MFU against a dense bf16 peak of %s TFLOP/s (%s)", peak_tflops(self.device),
                     self.device)
        log.info("on SIGTERM: a checkpoint after the step in progress, then exit %d for the restart; "
                 "%.0f s from SIGTERM to SIGKILL (%s)", preemption.EXIT_CODE, self.sigterm_budget_s,
                 self.sigterm_budget_from)
        self._new_interval()
        ctx.model.train()

    def _new_interval(self) -> None:
        self.t_last, self.steps_since = time.perf_counter(), 0
        self.wait_s, self.flops_since = 0.0, 0.0

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step: ``train.accum_steps`` micro-batches (forward, loss, backward;
        DDP averages gradients at the last one), then :func:`apply_gradients` (clipping, the
        non-finite guard) and the LR schedule. Returns the gradient norm."""
        tc, ctx = self.cfg.train, self.ctx
        for micro in range(tc.accum_steps):
            ctx.micro = micro
            t0 = time.perf_counter()
            batch = next(ctx.loader)
            self.wait_s += time.perf_counter() - t0
            if self.stage.flops is not None:
                self.flops_since += self.stage.flops(ctx, batch)
            last = micro == tc.accum_steps - 1
            sync = (ctx.model.no_sync() if (self.dist.world_size > 1 and not last)
                    else contextlib.nullcontext())
            with sync:
                loss, metrics = self.stage.forward_loss(ctx, batch, step)
                (loss / tc.accum_steps).backward()
            self.meter.add({"loss": loss, **metrics})
        grad_norm, finite = apply_gradients(ctx.raw, self.optimizer, self.cfg.optim.clip_grad)
        self.guard.update(finite, step + 1)
        self.scheduler.step_update(step + 1)
        self.steps_since += 1
        return grad_norm

    def log_step(self, done: int, grad_norm: torch.Tensor, bar: tqdm) -> None:
        """One ``metrics.jsonl`` record: the interval's means over steps and ranks, throughput,
        skipped steps and samples; then a new interval."""
        dist, optimizer = self.dist, self.optimizer
        means = distributed.mean_dict_over_ranks(self.meter.take(), dist)
        elapsed = time.perf_counter() - self.t_last
        record = {"step": done, **{k: finite_or_none(v) for k, v in means.items()},
                  "grad_norm": finite_or_none(float(grad_norm)),
                  "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0),
                  "clips_per_s": self.global_batch * self.steps_since / elapsed,
                  "step_time_s": elapsed / self.steps_since,
                  "data_wait_frac": min(1.0, self.wait_s / elapsed),
                  "nonfinite_skipped": self.guard.total,
                  # corrupt samples the loaders of all ranks skipped so far
                  "samples_skipped": int(distributed.sum_over_ranks(
                      getattr(self.ctx.loader, "num_skipped", 0), dist))}
        if self.stage.flops is not None:
            record.update(throughput(self.flops_since, elapsed, self.device))
        self.files.log_metrics(record)
        self.last_logged = record
        if record["loss"] is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        log.info("step %d/%d loss %s lr %.3e %.1f clips/s %.3f s/step%s", done,
                 self.schedule.steps, "nan" if record["loss"] is None else f"{record['loss']:.4f}",
                 record["lr"], record["clips_per_s"], record["step_time_s"],
                 f" mfu {record['mfu']:.1%}" if record.get("mfu") is not None else "")
        self._new_interval()

    def evaluate(self, done: int) -> None:
        """The stage's evaluation at step ``done``, logged as ``eval/*``; the best checkpoint
        kept by ``train.best_metric``."""
        ctx = self.ctx
        ctx.model.eval()
        self.eval_metrics = self.stage.evaluate(ctx, done)
        ctx.model.train()
        self.files.log_metrics({"step": done, **{f"eval/{k}": v for k, v in self.eval_metrics.items()}})
        self.best = _maybe_best(ctx, self.writer, self.best, self.eval_metrics, done,
                                self.optimizer, self.scheduler)

    def save(self, done: int) -> None:
        """The checkpoint of step ``done`` (a collective), written by the main rank."""
        t0 = time.perf_counter()
        payload = _payload(self.ctx, self.optimizer, self.scheduler, done)
        if self.dist.is_main:
            self.last_ckpt = self.writer.save(done, payload)
            self.files.flush()
            log.info("saved %s", self.last_ckpt)
        self.saved_step, self.save_s = done, time.perf_counter() - t0
        step_s = self.last_logged.get("step_time_s") or 0.0
        if self.dist.is_main and not self.warned_budget and step_s + self.save_s > self.sigterm_budget_s:
            self.warned_budget = True  # once: the advice does not change
            log.warning("a step (%.1f s) plus a checkpoint (%.1f s) take longer than the %.0f s a "
                        "SIGTERM leaves (%s): a preempted run may be killed before its checkpoint "
                        "is complete and then resumes from the previous one; give the pods a "
                        "longer grace", step_s, self.save_s, self.sigterm_budget_s,
                        self.sigterm_budget_from)

    def stop_if_sigterm(self, done: int) -> None:
        """After step ``done``: if SIGTERM reached any rank, checkpoint this step and raise
        :class:`~umt.runtime.preemption.Preempted` (the process exits for the restart).

        A collective on every step, so that every rank stops at the same one: one all-reduce
        of a scalar (~0.5 ms with gloo on a loaded 2-core machine, benchmarks/
        bench_sigterm_flag.py; on GPUs it waits for the step's kernels, which
        :func:`apply_gradients`' finite check has already waited for).
        """
        t_signal = preemption.received_at()
        ranks = round(distributed.sum_over_ranks(t_signal is not None, self.dist))
        if not ranks:
            return
        here = (f"this one {time.monotonic() - t_signal:.1f} s ago" if t_signal is not None
                else "not this one")
        if self.saved_step != done:  # not when the periodic checkpoint of this step was just written
            self.save(done)
        message = (f"SIGTERM reached {ranks} of {self.dist.world_size} rank(s) ({here}): "
                   f"checkpointed step {done} in {self.save_s:.1f} s of a {self.sigterm_budget_s:.0f} s "
                   f"budget ({self.sigterm_budget_from}); exiting with {preemption.EXIT_CODE} so "
                   f"that the job restarts and resumes from step {done}")
        log.warning("%s", message)
        raise preemption.Preempted(done, message)

    def finish(self, end: int) -> dict[str, Any]:
        """``summary.json``: the last logged metrics, evaluation, best checkpoint, stage extras."""
        tc = self.cfg.train
        summary = {"stage": self.stage.name, "steps": max(end, self.start),
                   "total_steps": self.schedule.steps, "schedule": self.schedule.as_dict(),
                   "final_loss": self.last_logged.get("loss"), "final_metrics": self.last_logged,
                   "nonfinite_skipped": self.guard.total, "global_batch": self.global_batch,
                   "checkpoint": self.last_ckpt, "output_dir": tc.output_dir}
        if self.eval_metrics:
            summary["eval"] = self.eval_metrics
        if self.best is not None:
            source = getattr(getattr(self.cfg, "eval", None), "source", None)
            summary["best"] = self.best
            summary["eval_source"] = source
            # The official recipes select on the test split for several tasks: say so beside it.
            summary["selection_note"] = (
                f"'eval' holds the last checkpoint's numbers; 'best' the best checkpoint by "
                f"{tc.best_metric} on {source}, selected on that set (optimistic when it is the "
                "test split, as in the official recipe)")
        if self.stage.summary is not None:
            summary.update(self.stage.summary(self.ctx))
        self.files.write_summary(summary)
        return summary


def _payload(ctx: Context, optimizer, scheduler, done: int) -> dict[str, Any]:
    """The checkpoint of step ``done`` (a collective: every rank's RNG state is gathered)."""
    rngs = distributed.gather_objects(checkpoint.rng_state(ctx.device), ctx.dist)
    if not ctx.dist.is_main:
        return {}
    data = ctx.cfg.data
    return {"model": ctx.raw.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rngs,
            # Data position: the loaders are functions of (seed, micro-batch, rank), so the
            # step and the batch geometry are what a resumed run needs to continue.
            "data": {"next_step": done, "samples_seen": done * ctx.global_batch,
                     "world_size": ctx.dist.world_size, "accum_steps": ctx.cfg.train.accum_steps,
                     "source": str(getattr(data, "source", None) or getattr(data, "sources", ""))},
            "config": to_yaml(ctx.cfg)}


def _maybe_best(ctx: Context, writer: checkpoint.CheckpointWriter, best: Optional[dict],
                metrics: dict[str, Any], done: int, optimizer, scheduler) -> Optional[dict]:
    """Keep ``best.pt`` by ``train.best_metric`` (higher is better unless ``train.best_mode``
    is 'min'), when the stage's config has one."""
    name = getattr(ctx.cfg.train, "best_metric", None)
    if not name:
        return best
    if name not in metrics:
        raise ValueError(f"train.best_metric={name!r} is not among the evaluation metrics "
                         f"{sorted(metrics)}")
    value = float(metrics[name])
    sign = -1.0 if getattr(ctx.cfg.train, "best_mode", "max") == "min" else 1.0
    if best is not None and sign * value <= sign * best["value"]:
        return best
    payload = _payload(ctx, optimizer, scheduler, done)
    info = {"metric": name, "value": value, "step": done}
    if ctx.dist.is_main:
        info["checkpoint"] = writer.save_best(done, payload, info)
    return info
