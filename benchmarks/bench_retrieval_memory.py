"""Peak memory per rank of ``umt eval retrieval``'s encode + re-rank (issue 22, item 4), 2 ranks
on CPU (gloo).

    PYTHONPATH=. python benchmarks/bench_retrieval_memory.py [--videos 256 --tokens 1568 --dim 96]

The real ``umt.eval.retrieval.encode_set`` and ``retrieval_scores`` run in 2 forked processes;
the model is a stub whose "video" is already its token set (``[B, tokens, dim]`` fp32, seeded by
the video's dataset position, so the result does not depend on the split) and whose ITM logit
is a dot product: what is measured is the plumbing (what each rank holds and receives), not a
network. Each rank reads every ``world``-th video; reported per rank: the peak resident set
growth (``VmHWM`` after minus ``VmRSS`` before, the peak reset through ``/proc/self/clear_refs``)
over encode + re-rank, and the bytes of the video tokens the rank holds afterwards. With
``--check`` the re-ranked scores are compared with a 1-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F


class StubModel(torch.nn.Module):
    """``encode_video`` / ``encode_text`` / ``itm_logits`` of a VL model, without a network."""

    def __init__(self, frames: int = 4, embed: int = 32, text_len: int = 8):
        super().__init__()
        self.frames, self.embed, self.text_len = frames, embed, text_len

    def encode_video(self, video, per_frame=True):
        feat = video[:, : self.frames, : self.embed]                   # [B, T, E]
        return video, F.normalize(feat, dim=-1)

    def encode_text(self, ids, att):
        g = torch.Generator().manual_seed(int(ids.sum()))
        hidden = torch.randn(ids.shape[0], ids.shape[1], video_dim(), generator=g)
        return hidden, F.normalize(hidden[:, 0, : self.embed], dim=-1)

    def itm_logits(self, v, t, m):                                     # [n, N, D], [n, L, D]
        s = (v.mean(1) * t[:, 0]).sum(-1)
        return torch.stack([-s, s], 1)


def video_dim() -> int:
    return int(os.environ.get("BENCH_DIM", "96"))


class StubTokenizer:
    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = torch.tensor([[hash_text(t) % 1000 + i for i in range(max_length)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def hash_text(t: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "big")


def batches(rank: int, world: int, videos: int, tokens: int, dim: int, batch: int = 8):
    mine = list(range(rank, videos, world))
    for s in range(0, len(mine), batch):
        idx = mine[s:s + batch]
        video = torch.stack([torch.randn(tokens, dim, generator=torch.Generator().manual_seed(i))
                             for i in idx])
        yield {"video": video, "key": [f"v{i}" for i in idx], "index": torch.tensor(idx),
               "captions": [[f"caption of video {i}", f"another of {i}"] for i in idx]}


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def run_rank(rank: int, world: int, args, port: int, out: str) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist

    from umt.eval.retrieval import encode_set, retrieval_scores
    from umt.runtime.distributed import DistInfo

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    info = DistInfo(rank, world, 0, torch.device("cpu"))
    cfg = SimpleNamespace(batch_size=8, max_videos=None, max_txt_len=8, k=args.k,
                          itm_batch_size=16, match_by="video", paragraph=False)
    model = StubModel()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss("VmRSS:")
    data = encode_set(model, batches(rank, world, args.videos, args.tokens, args.dim), StubTokenizer(),
                      cfg, device=info.device, precision="fp32", info=info)
    res = retrieval_scores(model, data, cfg, device=info.device, precision="fp32", info=info)
    peak = _rss("VmHWM:") - before
    with open(os.path.join(out, f"rank{rank}-of-{world}.json"), "w") as f:
        json.dump({"rank": rank, "peak_rss_growth_mb": peak / 2**20,
                   "tokens_held_mb": data.video_tokens.numel() * 4 / 2**20,
                   "videos_held": int(data.video_tokens.shape[0]),
                   "itm": res.get("itm"), "similarity": res["similarity"]}, f)
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(out: str, *, videos: int = 256, tokens: int = 1568, dim: int = 96, k: int = 8,
            world: int = 2, check: bool = False) -> dict:
    import torch.multiprocessing as mp

    import umt.eval.retrieval  # noqa: F401  (imported once, before the ranks fork)

    os.environ["BENCH_DIM"] = str(dim)
    args = argparse.Namespace(videos=videos, tokens=tokens, dim=dim, k=k)
    mp.start_processes(run_rank, args=(world, args, _free_port(), out), nprocs=world,
                       start_method="fork")
    ranks = [json.load(open(os.path.join(out, f"rank{r}-of-{world}.json"))) for r in range(world)]
    res = {"ranks": ranks, "all_tokens_mb": videos * tokens * dim * 4 / 2**20}
    if check:
        run_rank(0, 1, args, 0, out)
        res["one"] = json.load(open(os.path.join(out, "rank0-of-1.json")))
    return res


def main(argv=None) -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1568, help="8 frames x 196 patches")
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = measure(d, videos=a.videos, tokens=a.tokens, dim=a.dim, k=a.k, check=a.check)
    print(f"video tokens of the whole set: {res['all_tokens_mb']:.1f} MB")
    for r in res["ranks"]:
        print(f"rank {r['rank']}: peak RSS growth {r['peak_rss_growth_mb']:.1f} MB, holds "
              f"{r['videos_held']} videos' tokens ({r['tokens_held_mb']:.1f} MB); "
              f"itm r_mean {r['itm']['r_mean']:.3f}")
    if a.check:
        same = all(r["itm"] == res["one"]["itm"] for r in res["ranks"])
        print(f"1 process: itm r_mean {res['one']['itm']['r_mean']:.3f}; equal: {same}")


if __name__ == "__main__":
    sys.exit(main())
