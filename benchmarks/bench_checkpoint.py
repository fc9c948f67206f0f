"""Checkpoint cost: save / load time and size of a Stage-1 training checkpoint at B/16 and
L/16, to a local folder and to an S3-protocol server (moto on 127.0.0.1, started here).

    python benchmarks/bench_checkpoint.py --json benchmarks/results/checkpoint_cpu.json
    python benchmarks/bench_checkpoint.py --sizes base --targets local        # quicker

A checkpoint is what the training loop writes (``umt.train.loop._payload`` layout through
``umt.runtime.checkpoint.CheckpointWriter``): the student's state dict, the AdamW state (both
moments, so ~3x the weights), scheduler, RNG, data position and config. Random weights (the
content does not change the cost). Timed separately: ``serialise`` (``torch.save`` into
memory), ``save`` (the writer: serialise + write + ``latest`` + prune; local writes are
fsync'ed), ``load`` (``checkpoint.load``: read + ``torch.load(weights_only=True)``). The S3
server is moto in this process's threads, so S3 numbers measure the client path and HTTP on
loopback (multipart upload of 64 MiB parts), not a real object store's bandwidth. A size is
skipped for S3 when the machine has less free memory than ~4x the checkpoint (moto keeps the
object in memory; serialising holds another copy).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

SIZES = {"tiny": "umt_pretrain_vit_tiny_patch16_224", "base": "umt_pretrain_vit_base_patch16_224",
         "large": "umt_pretrain_vit_large_patch16_224"}


def payload(size: str) -> dict[str, Any]:
    """A Stage-1 checkpoint payload with a real AdamW state (one step on zero gradients)."""
    from umt.configs import OptimConfig
    from umt.models import create_model
    from umt.runtime import checkpoint
    from umt.train.optim import build_optimizer, build_scheduler, param_groups

    model = create_model(SIZES[size])
    opt = build_optimizer(param_groups(model, 0.05), OptimConfig(), 1e-4, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched = build_scheduler(opt, 1000, 10, 1e-6, 0.0)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": [checkpoint.rng_state(torch.device("cpu"))],
            "data": {"next_step": 1, "samples_seen": 64}, "config": "model: {}\n",
            "_params": sum(p.numel() for p in model.parameters())}


def mem_available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """moto's S3 server on 127.0.0.1 with one bucket; boto3 pointed at it through the
    environment (as for MinIO); stopped and the environment restored on exit."""

    KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")

    def __enter__(self) -> str:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log per part
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.saved = {k: os.environ.get(k) for k in self.KEYS}
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        return "s3://bench/run"

    def __exit__(self, *exc):
        self.server.stop()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def measure(size: str, target: str, out_dir: str, repeats: int) -> dict[str, Any]:
    from umt import storage
    from umt.runtime import checkpoint

    pl = payload(size)
    params = pl.pop("_params")
    ser, saves, loads = [], [], []
    nbytes = 0
    for i in range(repeats):
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save(pl, buf)
        ser.append(time.perf_counter() - t0)
        nbytes = buf.tell()
        del buf
        writer = checkpoint.CheckpointWriter(out_dir, keep_last=1)
        t0 = time.perf_counter()
        uri = writer.save(i + 1, pl)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        state = checkpoint.load(uri)
        loads.append(time.perf_counter() - t0)
        assert torch.equal(state["model"][next(iter(pl["model"]))], next(iter(pl["model"].values())))
        del state
    stored = storage.size(uri)
    gib = stored / 2**30
    row = {"size": size, "target": target, "params_m": params / 1e6, "file_gib": gib,
           "serialise_s": benchlib.summary(ser), "save_s": benchlib.summary(saves),
           "load_s": benchlib.summary(loads), "bytes_in_memory": nbytes}
    row["save_gib_per_s"] = gib / row["save_s"]["median"]
    row["load_gib_per_s"] = gib / row["load_s"]["median"]
    return row


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sizes", nargs="+", default=["base", "large"], choices=list(SIZES))
    p.add_argument("--targets", nargs="+", default=["local", "s3"], choices=("local", "s3"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dir", default=None, help="local folder (default: a temp folder, removed)")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = benchlib.machine(torch.device("cpu"))
    rows, skipped = [], []
    tmp = args.dir or tempfile.mkdtemp(prefix="umt_bench_ckpt_")
    try:
        for size in args.sizes:
            if "local" in args.targets:
                rows.append(measure(size, "local", os.path.join(tmp, size), args.repeats))
            if "s3" in args.targets:
                need = 4 * (rows[-1]["file_gib"] * 2**30 if rows and rows[-1]["size"] == size
                            else {"tiny": 0.1, "base": 1.0, "large": 3.5}[size] * 2**30)
                if mem_available() < need:
                    skipped.append(f"{size} on s3: {mem_available() / 2**30:.1f} GiB free, "
                                   f"need ~{need / 2**30:.1f}")
                    continue
                with MotoS3() as prefix:
                    rows.append(measure(size, "s3 (moto, loopback)", f"{prefix}/{size}", args.repeats))
            print(f"{size}: done", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r["save_ms"] = r["save_s"]["median"] * 1e3
        r["load_ms"] = r["load_s"]["median"] * 1e3
        r["serialise_ms"] = r["serialise_s"]["median"] * 1e3
    env["load_average_end"] = benchlib.load_average()
    print(benchlib.table(rows, ["size", "target", "params_m", "file_gib", "serialise_ms", "save_ms",
                                "load_ms", "save_gib_per_s", "load_gib_per_s"],
                         {"params_m": ".0f", "file_gib": ".2f", "serialise_ms": ".0f", "save_ms": ".0f",
                          "load_ms": ".0f", "save_gib_per_s": ".2f", "load_gib_per_s": ".2f"}))
    for s in skipped:
        print("skipped:", s)
    out = {"benchmark": "checkpoint", "machine": env, "args": vars(args), "results": rows,
           "skipped": skipped}
    benchlib.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
