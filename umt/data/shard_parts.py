"""Sharding in parts: ``umt shard --part I/N`` on N machines, then ``umt shard merge``.

    umt shard -i s3://raw/k710/train.csv -o s3://data/k710 --part 0/16     # on pod 0
    umt shard -i s3://raw/k710/train.csv -o s3://data/k710 --part 15/16    # ... on pod 15
    umt shard merge s3://data/k710                                         # -> dataset.json

Every part reads the whole manifest and keeps the inputs assigned to it, in the order a whole
run packs them (the seeded shuffle of ``umt.data.shard.shuffled``, or manifest order); it writes its shards, resumably as a whole run does (``umt.data.shard``), into
``<output>/part-IIIII-of-NNNNN/`` and, last, its part manifest ``part.json`` there (atomic). The
merge joins the part manifests into the one ``<output>/dataset.json`` every loader reads.

Which part an input belongs to (:func:`part_of`):

* its **sample id** is the manifest's ``id`` value, else its ``video`` URI as resolved, plus
  ``#<start>-<end>`` when the row has a clip range (two clips of one video are two samples);
* its part is ``jump(sha256(sample id)[:8], N)``, Lamping and Veach's jump consistent hash
  (arXiv:1406.2294) of the id's SHA-256. It depends on the id and N only: not on row order,
  other rows, workers, machine or Python's per-process ``hash()`` seed. So a rerun of part I/N
  shards exactly the same inputs (and resumes its verified shards), whoever runs it.
* Changing N to M > N moves an input only into one of the new parts N..M-1, never between two
  parts that exist for both counts, and moves the fewest inputs any balanced assignment can
  (an expected 1 - N/M of them; ``hash mod N`` would move most: 2/3 of them from 2 to 3 parts).
  On disk, though, a part's shards are keyed by I *and* N (they are packed in order, so a
  part that lost inputs has new shard boundaries): a new N re-shards every part.

Two rows with identical content but different sample ids may fall into different parts; both
are kept, as in a single run, but with the same key (a single run suffixes the second ``_1``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import umt
from umt import storage
from umt.data import dataset_json
from umt.data.downstream import ANSWER_LIST

PART_FILENAME = "part.json"
PART_FORMAT = "umt-shard-part"
PART_FORMAT_VERSION = 1
# Names the assignment rule; a part manifest written under another rule is never merged with
# one written under this one.
ASSIGNMENT = "jump-sha256-v1"
MAX_PARTS = 99_999  # five digits in the folder names
_PART_DIR = re.compile(r"part-(\d{5})-of-(\d{5})")


class PartError(ValueError):
    """Parts that cannot be merged: one missing, duplicated, or from another run."""


# ---------------------------------------------------------------------------------- assignment

@dataclass(frozen=True)
class Part:
    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.count <= MAX_PARTS or not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index}/{self.count}: need 0 <= I < N <= {MAX_PARTS}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def folder(self, output: str) -> str:
        return storage.join(output, self.name)

    def select(self, items: Sequence[Any]) -> list[Any]:
        """The manifest items of this part, in manifest order."""
        return [it for it in items if part_of(sample_id(it), self.count) == self.index]


def parse_part(text: str) -> Part:
    """``"3/16"`` -> ``Part(3, 16)``; raises ValueError with the expected form."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--part {text!r}: expected I/N, e.g. 0/4 (part I of N, 0-based)")
    return Part(int(m.group(1)), int(m.group(2)))


def sample_id(item: Any) -> str:
    """What identifies an input across runs: the ``id`` column, else the video URI; plus the
    clip range, if any."""
    base = item.id if item.id is not None else item.video
    if item.start is not None or item.end is not None:
        base = f"{base}#{item.start}-{item.end}"
    return base


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: 64-bit ``key`` -> bucket in [0, buckets)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def part_of(sid: str, count: int) -> int:
    """The part (0-based, of ``count``) that the input with sample id ``sid`` belongs to."""
    key = int.from_bytes(hashlib.sha256(sid.encode("utf-8")).digest()[:8], "big")
    return jump_hash(key, count)


# ------------------------------------------------------------------------------ part manifests

def write_part_manifest(folder: str, part: Part, info: dataset_json.DatasetInfo, *,
                        num_inputs: int, dataset_fingerprint: str) -> str:
    """``part.json`` in the part's folder, written last and atomically: its presence is what
    marks the part complete. Shard URIs stay relative to the part folder."""
    body = {"format": PART_FORMAT, "format_version": PART_FORMAT_VERSION,
            "created_by": f"umt {umt.__version__}", "part": part.index, "num_parts": part.count,
            "assignment": ASSIGNMENT, "num_inputs": num_inputs,
            "dataset_fingerprint": dataset_fingerprint, "dataset": info.to_dict()}
    uri = storage.join(folder, PART_FILENAME)
    storage.write_bytes(uri, (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode())
    return uri


def _read_part(uri: str) -> dict[str, Any]:
    try:
        body = json.loads(storage.read_bytes(uri, max_bytes=dataset_json.MAX_BYTES))
    except ValueError as e:
        raise PartError(f"{uri}: not a part manifest ({e})") from None
    if not isinstance(body, dict) or body.get("format") != PART_FORMAT:
        raise PartError(f"{uri}: not a part manifest written by `umt shard --part`")
    if body.get("format_version", 0) > PART_FORMAT_VERSION:
        raise PartError(f"{uri}: part format {body.get('format_version')} is newer than this "
                        f"umt understands; upgrade umt")
    if body.get("assignment") != ASSIGNMENT:
        raise PartError(f"{uri}: written with the assignment {body.get('assignment')!r}, not "
                        f"{ASSIGNMENT!r}: rerun that part with this umt")
    try:
        body["info"] = dataset_json.from_dict(body.get("dataset"), location=uri)
    except dataset_json.DatasetJsonError as e:
        raise PartError(str(e)) from None
    return body


def _part_folders(output: str) -> dict[tuple[int, int], bool]:
    """``{(index, count): has part.json}`` for every part folder directly under ``output``."""
    root = output.rstrip("/")
    found: dict[tuple[int, int], bool] = {}
    for uri in storage.list_uris(output):
        rel = uri[len(root) + 1:] if uri.startswith(root + "/") else ""
        pieces = rel.replace("\\", "/").split("/")
        if len(pieces) == 2 and (m := _PART_DIR.fullmatch(pieces[0])):
            key = (int(m.group(1)), int(m.group(2)))
            found[key] = found.get(key, False) or pieces[1] == PART_FILENAME
    return found


# ----------------------------------------------------------------------------------- the merge

def merge_parts(output: str, num_parts: Optional[int] = None) -> dataset_json.DatasetInfo:
    """Join the parts under ``output`` into ``<output>/dataset.json``; return it.

    ``num_parts`` picks the part count when folders of several are there (an earlier run with
    another N). Raises :class:`PartError` naming the missing, duplicated or inconsistent part.
    """
    output = storage.check_uri(str(output)).removeprefix("file://")
    folders = _part_folders(output)
    counts = sorted({n for _, n in folders})
    if num_parts is None:
        if not counts:
            raise PartError(f"{output}: no part folders (part-IIIII-of-NNNNN/) to merge: run "
                            f"`umt shard ... --part I/N` for every I first")
        if len(counts) > 1:
            raise PartError(f"{output} holds parts of several part counts ({', '.join(map(str, counts))}): "
                            f"pass --parts N, or remove the folders of the other counts")
        num_parts = counts[0]
    missing = [i for i in range(num_parts) if not folders.get((i, num_parts))]
    if missing:
        shown = ", ".join(f"{i}/{num_parts}" for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        which = f"{missing[0]}/{num_parts}" if len(missing) == 1 else f"I/{num_parts} for each"
        raise PartError(f"{output}: part {shown}{more} missing (no {PART_FILENAME}: not run, "
                        f"still running, or killed): run `umt shard -i <manifest> -o {output} "
                        f"--part {which}` (a killed part resumes its verified shards) and merge "
                        f"again")

    parts = []
    for i in range(num_parts):
        uri = storage.join(Part(i, num_parts).folder(output), PART_FILENAME)
        body = _read_part(uri)
        if (body.get("part"), body.get("num_parts")) != (i, num_parts):
            raise PartError(f"{uri} is the manifest of part {body.get('part')}/"
                            f"{body.get('num_parts')}, not {i}/{num_parts} (copied folder?): "
                            f"part {body.get('part')}/{body.get('num_parts')} would be merged "
                            f"twice; rerun part {i}/{num_parts} into its own folder")
        parts.append(body)
    first = parts[0]["info"]
    for i, body in enumerate(parts[1:], start=1):
        info = body["info"]
        # The class list first: the one mismatch that would silently mislabel samples.
        if info.classes != first.classes:
            diff = next((k for k, (a, b) in enumerate(zip(first.classes, info.classes)) if a != b),
                        min(len(first.classes), len(info.classes)))
            raise PartError(f"part {i}/{num_parts} has another class list than part 0 "
                            f"({len(info.classes)} vs {len(first.classes)} classes, first "
                            f"difference at index {diff}): shard every part with the same "
                            f"manifest and --classes")
        if info.source.get("sha256") != first.source.get("sha256"):
            raise PartError(f"part {i}/{num_parts} was sharded from another manifest than part "
                            f"0 ({info.source.get('input')} sha256 {info.source.get('sha256', '')[:12]} "
                            f"vs {first.source.get('input')} {first.source.get('sha256', '')[:12]})")
        if body["dataset_fingerprint"] != parts[0]["dataset_fingerprint"]:
            raise PartError(f"part {i}/{num_parts} was sharded with other settings than part 0 "
                            f"(transcode, shard size or format): rerun it with part 0's")
    total = first.source.get("num_inputs")
    covered = sum(int(b["num_inputs"]) for b in parts)
    if covered != total:
        raise PartError(f"the {num_parts} parts cover {covered} inputs, the manifest has {total}")

    shards, failures = [], []
    for i, body in enumerate(parts):
        name = Part(i, num_parts).name
        for s in body["info"].shards:
            s.uri = s.uri if storage.is_s3(s.uri) or s.uri.startswith("/") else f"{name}/{s.uri}"
            shards.append(s)
        failures += body["info"].failures
    failures.sort(key=lambda f: f.index)
    infos = [b["info"] for b in parts]
    media: dict[str, int] = {}
    for info in infos:
        for kind, n in info.media.items():
            media[kind] = media.get(kind, 0) + n

    def total_of(field: str) -> Optional[int]:  # unknown when any part did not record it
        values = [getattr(info, field) for info in infos]
        return None if any(v is None for v in values) else sum(values)

    merged = dataset_json.DatasetInfo(
        shards=shards, classes=list(first.classes), failures=failures, num_failed=len(failures),
        num_samples=sum(s.num_samples for s in shards), num_bytes=sum(s.num_bytes for s in shards),
        media=media, num_captions=total_of("num_captions"),
        num_questions=total_of("num_questions"),
        source={**first.source, "parts": num_parts}, transcode=dict(first.transcode),
        created_by=f"umt {umt.__version__}", location=storage.join(output, dataset_json.FILENAME))
    if merged.num_samples == 0:
        raise PartError(f"{output}: the {num_parts} parts hold no samples ({len(failures)} inputs "
                        f"failed; reasons in each part's {PART_FILENAME})")
    _copy_answer_list(output, num_parts)
    dataset_json.save(merged, merged.location)
    return merged


def _copy_answer_list(output: str, num_parts: int) -> None:
    """A QA manifest's answer list, written into every part folder, goes beside dataset.json."""
    lists = []
    for i in range(num_parts):
        try:
            lists.append(storage.read_bytes(storage.join(Part(i, num_parts).folder(output),
                                                         ANSWER_LIST)))
        except FileNotFoundError:
            pass
    if lists:
        if any(json.loads(a) != json.loads(lists[0]) for a in lists[1:]):
            raise PartError(f"{output}: the parts' {ANSWER_LIST} files differ")
        storage.write_bytes(storage.join(output, ANSWER_LIST), lists[0])
