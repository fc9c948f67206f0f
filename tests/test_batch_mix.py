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
