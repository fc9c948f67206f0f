"""Batch diversity (issue 22, item 2): shards packed in a seeded shuffle, shards interleaved in
the training stream; measured by ``benchmarks/bench_batch_mix.py`` (numbers in BENCHMARKS.md)."""

from __future__ import annotations

import os
import sys

import pytest

from umt.data.manifest import Item
from umt.data.shard import shuffled
from umt.data.shard_parts import Part

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))


@pytest.fixture(scope="module")
def entropies(tmp_path_factory):
    from bench_batch_mix import measure

    return measure(str(tmp_path_factory.mktemp("mix")), batches=200)


def test_batches_from_class_sorted_input_are_as_diverse_as_a_global_shuffle(entropies):
    """A <root>/<class>/ listing, sharded with the defaults and read by the training stream:
    the mean class entropy of a batch is within 10 % of a global random sampler's; without the
    packing shuffle and the interleaving it is not (so the measure can tell)."""
    glob = entropies["global"]
    assert abs(entropies["shuffled shards, open_shards=4"] - glob) <= 0.1 * glob, entropies
    assert entropies["sorted shards, open_shards=1"] < 0.8 * glob, entropies
    # Interleaving alone widens the window over sorted shards.
    assert entropies["sorted shards, open_shards=4"] > entropies["sorted shards, open_shards=1"]


def test_packing_order_is_seeded_deterministic_and_composes_with_parts():
    items = [Item(video=f"s3://raw/c{i // 10}/v{i}.mp4", index=i) for i in range(60)]
    order = [it.index for it in shuffled(items, 0)]
    assert order == [it.index for it in shuffled(list(reversed(items)), 0)]  # not row order
    assert order != sorted(order) and sorted(order) == list(range(60))
    assert order != [it.index for it in shuffled(items, 1)]
    # A part packs its own inputs in the order they have in the whole run.
    for i in range(3):
        part = Part(i, 3)
        mine = {it.index for it in part.select(items)}
        assert [it.index for it in shuffled(part.select(items), 0)] == [k for k in order if k in mine]


# ------------------------------------------------------------------ rows (issue 22, item 3)

def test_one_media_rarely_twice_in_a_batch_of_a_multi_caption_set(tmp_path):
    """48 images x 5 captions through the Stage-2 row stage (caption_sampling="all"), batches
    of 8. Bound: one random caption per visit and visits spread like the shards, so a repeat
    needs two visits of one media within a batch's window -- the birthday rate of drawing media
    uniformly, (B-1)/(2M) = 7.3 %, which the official global row shuffle has too (5.3 % here).
    Expanding every caption before the buffer (before) put a third of each batch's rows on a
    media already in it."""
    from bench_batch_mix import measure_rows

    res = measure_rows(str(tmp_path), batches=200)
    bound = res["birthday bound (B-1)/(2M)"]
    assert res["rows now"] <= bound, res
    assert res["expanded before"] > 3 * bound, res


def test_no_vtm_negative_shares_the_positives_media():
    """A batch with duplicated media (distinct caption ids), the same media most similar:
    never drawn as each other's negatives; without media ids they would be."""
    import torch

    from umt.losses import HardNegatives, sample_hard_negatives

    media = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    idx = torch.arange(8) + 100                       # every row its own caption id
    sim = (media.view(-1, 1) == media.view(1, -1)).float() * 10 + torch.rand(8, 8)
    same = media.view(-1, 1) == media.view(1, -1)
    rows = torch.arange(8)
    g = torch.Generator().manual_seed(0)
    hit_without = 0
    for _ in range(50):
        neg = sample_hard_negatives(sim, idx, generator=g, media=media)
        assert neg.valid.all()
        assert not same[rows, neg.video_for_text].any() and not same[neg.text_for_video, rows].any()
        old = sample_hard_negatives(sim, idx, generator=g)
        hit_without += int(same[rows, old.video_for_text].sum())
    assert hit_without > 0  # the case is real: siblings are the "hardest" negatives
    # A row whose only other rows are its own media has no negative.
    neg = sample_hard_negatives(torch.rand(3, 3), torch.arange(3), media=torch.zeros(3, dtype=torch.long))
    assert not neg.valid.any()
    with pytest.raises(ValueError, match="media"):
        HardNegatives.from_indices(torch.tensor([1, 0]), torch.tensor([1, 0]), torch.arange(2),
                                   media=torch.zeros(2, dtype=torch.long))
    # Distinct media: the same draws as without media ids (outputs of existing runs unchanged).
    a = sample_hard_negatives(sim, idx, generator=torch.Generator().manual_seed(3), media=rows)
    b = sample_hard_negatives(sim, idx, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.video_for_text, b.video_for_text) and torch.equal(a.text_for_video, b.text_for_video)


# ------------------------------------------------------- evaluation memory (issue 22, item 4)

def test_retrieval_eval_keeps_video_tokens_on_their_rank(tmp_path):
    """2 gloo ranks through the real encode_set + re-ranking (a stub model: the plumbing is
    what is tested): each rank holds only its own videos' tokens, and the re-ranked metrics
    equal a 1-process run's exactly."""
    from bench_retrieval_memory import measure

    res = measure(str(tmp_path), videos=24, tokens=16, dim=8, k=4, check=True)
    assert [r["videos_held"] for r in res["ranks"]] == [12, 12]
    assert res["one"]["videos_held"] == 24
    for r in res["ranks"]:
        assert r["itm"] == res["one"]["itm"] and r["similarity"] == res["one"]["similarity"]


@pytest.mark.parametrize("num_shards", [1, 2, 3, 6])
def test_fewer_shards_than_readers_split_by_sample_not_every_shard_per_reader(monkeypatch, num_shards):
    """4 readers (2 ranks x 2 workers): with fewer shards than readers each reader keeps a
    contiguous range of positions and streams only the shards it touches, up to its range's
    end; with more, whole shards. Every sample is read exactly once, counts stay even."""
    from umt.data import loader_kit

    urls = [f"/data/shard-{i:06d}.tar" for i in range(num_shards)]
    sizes = [5 + i for i in range(num_shards)]
    kept, streamed, consumed = [], [], []
    for rank in (0, 1):
        split = loader_kit.EvalSplit(urls, rank, 2, sizes)
        for worker in (0, 1):
            monkeypatch.setattr(loader_kit, "worker_slot", lambda w=worker: (w, 2))
            mine = [s["url"] for s in split]
            streamed.append(mine)
            read = []

            def samples():
                for u in mine:
                    for p in range(sizes[urls.index(u)]):
                        read.append(1)
                        yield {"__url__": u, "__key__": f"{u}:{p}"}

            kept.append([s["__key__"] for s in loader_kit.eval_select(samples(), split)])
            consumed.append(len(read))
    flat = [k for part in kept for k in part]
    assert sorted(flat) == sorted(f"{u}:{p}" for u, n in zip(urls, sizes) for p in range(n))
    if num_shards < 4:
        assert max(map(len, kept)) - min(map(len, kept)) <= 1
        assert max(map(len, streamed)) <= 2 and (num_shards < 3 or max(map(len, streamed)) < num_shards)
        assert sum(consumed) < 4 * sum(sizes)  # readers stop after their range
    else:
        assert sorted(u for m in streamed for u in m) == urls
