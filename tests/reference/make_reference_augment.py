#!/usr/bin/env python
"""Freeze outputs of the official UMT fine-tuning augmentations for given random draws.

Writes ``tests/reference/augment_official.pt``, read by ``tests/test_clip_augment.py``. The
official code is not a dependency: this script imports it from a directory given on the
command line and is only needed to regenerate the file.

Regenerate (from the repository root, CPU, ~2 s)::

    mkdir -p /tmp/umt_official
    git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo archive HEAD \\
        single_modality/datasets single_modality/functional.py | tar -x -C /tmp/umt_official
    .venv/bin/python tests/reference/make_reference_augment.py --official /tmp/umt_official \\
        --commit "$(git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo rev-parse HEAD)"

``--official`` is the extraction root or its ``single_modality`` folder.

How the draws are fixed. Inside each official module (and only there) the names ``random``
and ``np`` are replaced by scripted stand-ins that return given values and log them:
``random()`` and ``uniform(a, b) = a + (b - a) * u`` return scripted fractions ``u``,
``gauss(mu, s) = mu + s * z`` scripted ``z``, ``randint(a, b) = a + min(int(u * (b - a + 1)),
b - a)``; ``np.random.choice`` returns scripted indices, ``np.random.{rand, uniform, beta,
randint}`` likewise; torch's global seed is set before the erasing noise is drawn. After each
call every scripted queue must be empty, so the script knows exactly which draws the official
code takes. The file stores those draws in the order *our* samplers take them, and what the
official code did with them (ops and arguments, crop box, flip, erasing box, output).

Cases:
  view_*     the whole official ``VideoClsDataset_sparse._aug_frame`` (RandAugment
             rand-m7-n4-mstd0.5-inc1, normalise, RandomResizedCrop, flip, cube RandomErasing)
             on a uint8 clip [3, 40, 56, 3] -> [3, 3, 32, 32]:
             view_kinetics (flip on; ops fire and skip; erasing), view_ssv2 (data_set SSV2: no
             flip; a rejected crop try; magnitude clipped at 10; no erasing), view_fallback
             (10 rejected crop tries -> the centre fallback; a rejected erasing try).
  ops        every RandAugment op of timm's increasing and plain sets (21 names), fired alone
             by the official ``AugmentOp`` on a 3-frame PIL clip [3, 32, 48, 3], signs
             alternating: uint8 outputs and the op arguments.
  mixup_*    official ``datasets/mixup.py::Mixup`` (mode batch) on x [4, 3, 3, 8, 10] with
             5 classes, smoothing 0.1: cutmix (box clipped by two borders), blend, a skipped
             batch (prob 0.5), cutmix only (mixup alpha 0).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "_umt_official_datasets"
FILES = ("kinetics_sparse.py", "video_transforms.py", "rand_augment.py", "random_erasing.py", "mixup.py")


# --------------------------------------------------------------------------- loading
def _stub(name: str, **attrs) -> None:
    """Register an import-only stand-in for a module the official files import but whose
    functions the cases never call (cv2 in functional.py; numpy.lib.function_base, removed in
    numpy 2, for an unused ``disp``)."""
    try:
        importlib.import_module(name)
    except ImportError:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m


def load_official(path: str) -> SimpleNamespace:
    cands = [path, os.path.join(path, "single_modality")]
    root = next((c for c in cands if os.path.isfile(os.path.join(c, "datasets", "rand_augment.py"))), None)
    if root is None:
        raise SystemExit(f"single_modality/datasets/rand_augment.py not found under {path!r}")
    _stub("cv2")
    _stub("numpy.lib.function_base", disp=print)
    _stub("decord", VideoReader=None, cpu=None)
    # video_transforms.py does `import functional as FF` (single_modality/functional.py).
    spec = importlib.util.spec_from_file_location("functional", os.path.join(root, "functional.py"))
    functional = importlib.util.module_from_spec(spec)
    sys.modules["functional"] = functional
    spec.loader.exec_module(functional)
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [os.path.join(root, "datasets")]
    sys.modules[PKG] = pkg
    mods = SimpleNamespace(**{n: importlib.import_module(f"{PKG}.{n}") for n in
                              ("rand_augment", "random_erasing", "video_transforms", "kinetics_sparse", "mixup")})
    mods.sha256 = {}
    for f in FILES:
        with open(os.path.join(root, "datasets", f), "rb") as fh:
            mods.sha256[f] = hashlib.sha256(fh.read()).hexdigest()
    return mods


# --------------------------------------------------------------------------- scripted draws
class Script:
    """Scripted values for one official module; logs what it returned, in order."""

    def __init__(self, u=(), z=(), idx=(), beta=()):
        self.u, self.z, self.idx, self.beta = list(u), list(z), list(idx), list(beta)
        self.u_log, self.z_log, self.int_log, self.beta_log = [], [], [], []

    def _u(self):
        if not self.u:
            raise RuntimeError("the official code took more uniform draws than scripted")
        v = self.u.pop(0)
        self.u_log.append(v)
        return v

    # stdlib `random` interface
    def random(self):
        return self._u()

    def uniform(self, a=0.0, b=1.0):
        return a + (b - a) * self._u()

    def gauss(self, mu, sigma):
        z = self.z.pop(0)
        self.z_log.append(z)
        return mu + sigma * z

    def randint(self, a, b):  # inclusive, as stdlib random.randint
        u = self.u.pop(0)
        v = a + min(int(u * (b - a + 1)), b - a)
        self.int_log.append((v, a, b + 1))
        return v

    # numpy.random interface
    def rand(self):
        return self._u()

    def np_randint(self, low, high, size=None):  # exclusive high, as numpy
        assert size is None
        u = self.u.pop(0)
        v = low + min(int(u * (high - low)), high - low - 1)
        self.int_log.append((v, low, high))
        return v

    def np_beta(self, a, b):
        v = self.beta.pop(0)
        self.beta_log.append((v, a, b))
        return v

    def choice(self, seq, n, replace=True, p=None):
        assert replace and p is None
        out = [seq[self.idx.pop(0)] for _ in range(n)]
        return out

    def exhausted(self) -> bool:
        return not (self.u or self.z or self.idx or self.beta)


class NumpyWith:
    """``numpy`` with ``numpy.random`` replaced by a Script (everything else passes through)."""

    def __init__(self, script: Script):
        self.random = SimpleNamespace(choice=script.choice, rand=script.rand, uniform=script.uniform,
                                      randint=script.np_randint, beta=script.np_beta)

    def __getattr__(self, name):
        return getattr(np, name)


def _patched(mods, module_name: str, *, random=None, np_script=None):
    m = getattr(mods, module_name)
    if random is not None:
        m.random = random
    if np_script is not None:
        m.np = NumpyWith(np_script)


def _restore(mods) -> None:
    import random as _random

    for name in ("rand_augment", "random_erasing", "video_transforms", "mixup"):
        m = getattr(mods, name)
        if hasattr(m, "random"):
            m.random = _random
        m.np = np


# --------------------------------------------------------------------------- cases
AA = "rand-m7-n4-mstd0.5-inc1"
INC = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
PLAIN_ONLY = ["Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"]
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
          "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}


def clip_u8(seed: int, t: int, h: int, w: int) -> np.ndarray:
    """A smooth random colour field plus noise: the ops (equalize, posterize, shear...) all
    change it visibly, unlike flat or pure-noise frames."""
    g = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = []
    for i in range(t):
        base = np.stack([yy * 180 + 40 * i, xx * 200, (1 - yy) * xx * 160 + 30], -1)
        frames.append(base + g.normal(0, 18, (h, w, 3)))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _ra_script(ops: list[tuple[str, bool, float, bool]]):
    """(name, fires, z, negate) per drawn op -> (indices, uniforms, normals) for the official
    RandAugment: per op a fire draw (fires when u <= 0.5), then gauss, then the sign draw of a
    signed op (negative when u > 0.5)."""
    idx, u, z = [], [], []
    for name, fires, zz, neg in ops:
        idx.append(INC.index(name))
        u.append(0.3 if fires else 0.8)
        if fires:
            z.append(zz)
            if name in SIGNED:
                u.append(0.8 if neg else 0.2)
    return idx, u, z


def run_view(mods, frames, *, data_set, ops, crop_u, crop_int_u, flip_u, erase_u, erase_int_u,
             noise_seed, size=32):
    ra_idx, ra_u, ra_z = _ra_script(ops)
    ra = Script(u=ra_u, z=ra_z, idx=ra_idx)
    _patched(mods, "rand_augment", random=ra, np_script=ra)
    # Crop tries take (scale u, ratio u) each, the successful last try then two randints.
    crop = Script(u=list(crop_u) + list(crop_int_u))
    # np.random.uniform() is drawn once per crop try (switch_hw, unused), then for the flip.
    vt_np = Script(u=[0.99] * (len(crop_u) // 2) + ([flip_u] if data_set != "SSV2" else []))
    _patched(mods, "video_transforms", random=crop, np_script=vt_np)
    # Erasing takes the probability u, then (area u, aspect u) per try, then two randints.
    er = Script(u=list(erase_u) + list(erase_int_u))
    _patched(mods, "random_erasing", random=er)

    applied, boxes, pixels = [], [], []
    orig_ops = dict(mods.rand_augment.NAME_TO_OP)
    for name, fn in orig_ops.items():
        def rec(img, *args, _name=name, _fn=fn, **kw):
            applied.append((_name, tuple(float(a) for a in args)))
            return _fn(img, *args, **kw)
        mods.rand_augment.NAME_TO_OP[name] = rec
    orig_crop = mods.video_transforms._get_param_spatial_crop

    def rec_crop(*a, **k):
        boxes.append(orig_crop(*a, **k))
        return boxes[-1]
    mods.video_transforms._get_param_spatial_crop = rec_crop
    orig_pixels = mods.random_erasing._get_pixels

    def rec_pixels(*a, **k):
        pixels.append(tuple(a[2]))
        return orig_pixels(*a, **k)
    mods.random_erasing._get_pixels = rec_pixels
    try:
        args = SimpleNamespace(aa=AA, train_interpolation="bicubic", data_set=data_set, reprob=0.25,
                               remode="pixel", recount=1)
        me = SimpleNamespace(crop_size=size, rand_erase=True)
        torch.manual_seed(noise_seed)
        out = mods.kinetics_sparse.VideoClsDataset_sparse._aug_frame(me, frames, args)
    finally:
        mods.rand_augment.NAME_TO_OP.update(orig_ops)
        mods.video_transforms._get_param_spatial_crop = orig_crop
        mods.random_erasing._get_pixels = orig_pixels
        _restore(mods)
    for s, what in ((ra, "RandAugment"), (crop, "crop"), (vt_np, "flip"), (er, "erasing")):
        if not s.exhausted():
            raise RuntimeError(f"the official {what} took fewer draws than scripted")
    t = frames.shape[0]
    # The official AugmentOp applies each op to every frame with the same arguments.
    assert len(applied) % t == 0 and all(applied[i] == applied[i - i % t] for i in range(len(applied)))
    ops_applied = applied[::t]
    erase = None
    if pixels:
        assert len(pixels) == t and len(set(pixels)) == 1
        top, left = er.int_log[0][0], er.int_log[1][0]
        erase = (top, left, pixels[0][1], pixels[0][2])
    flipped = data_set != "SSV2" and flip_u < 0.5
    ints = ([(i, 0, len(INC)) for i in ra_idx] + crop.int_log + er.int_log
            + ([(noise_seed, 0, 2**63 - 1)] if erase else []))
    return {
        "frames": torch.from_numpy(frames.copy()),
        "img_size": size,
        "flip_enabled": data_set != "SSV2",
        # The draws in the order our samplers take them (uniforms: RandAugment, crop, flip,
        # erasing; ints: op indices, crop, erasing, noise seed).
        "uniforms": ra.u_log + crop.u_log + ([flip_u] if data_set != "SSV2" else []) + er.u_log,
        "normals": ra.z_log,
        "ints": ints,
        "ops": ops_applied,
        "crop": tuple(int(v) for v in boxes[-1]),
        "flip": flipped,
        "erase": erase,
        "noise_seed": noise_seed if erase else 0,
        "output": out.contiguous(),
    }


def case_views(mods) -> dict:
    out = {}
    out["view_kinetics"] = run_view(
        mods, clip_u8(1, 3, 40, 56), data_set="Kinetics-400",
        ops=[("Rotate", True, 0.8, True), ("ShearX", False, 0, False),
             ("BrightnessIncreasing", True, -1.2, False), ("TranslateXRel", True, 3.0, True)],
        crop_u=[0.5, 0.3], crop_int_u=[0.7, 0.2], flip_u=0.1,
        erase_u=[0.1, 0.5, 0.6], erase_int_u=[0.3, 0.8], noise_seed=1234)
    out["view_ssv2"] = run_view(
        mods, clip_u8(2, 3, 40, 56), data_set="SSV2",
        # SolarizeIncreasing at 7 + 0.5 * 8 = 11 -> clipped to 10 (threshold 0: inverts all).
        ops=[("PosterizeIncreasing", True, 0.4, False), ("SolarizeIncreasing", True, 8.0, False),
             ("SolarizeAdd", True, -0.6, False), ("AutoContrast", True, 0.0, False)],
        # try 1: area 1, aspect 4/3 -> h = 41 > 40 rejected; try 2 fits.
        crop_u=[1.0, 1.0, 0.2, 0.9], crop_int_u=[0.5, 0.999], flip_u=0.0,
        erase_u=[0.5], erase_int_u=[], noise_seed=0)
    out["view_fallback"] = run_view(
        mods, clip_u8(3, 3, 40, 56), data_set="Kinetics-400",
        ops=[("ShearY", True, -0.5, True), ("TranslateYRel", True, 1.5, False),
             ("ContrastIncreasing", True, 0.3, True), ("Equalize", True, 0.0, False)],
        crop_u=[1.0, 1.0] * 10, crop_int_u=[], flip_u=0.7,
        # erasing try 1: area 1/3, aspect 3.33 -> h = 34 >= 32 rejected; try 2 fits.
        erase_u=[0.2, 1.0, 1.0, 0.4, 0.3], erase_int_u=[0.0, 0.999], noise_seed=99)
    return out


def case_ops(mods) -> dict:
    frames = clip_u8(4, 3, 32, 48)
    ra = mods.rand_augment
    hparams = {"translate_const": int(32 * 0.45), "img_mean": (128, 128, 128),
               "interpolation": mods.video_transforms._pil_interp("bicubic"), "magnitude_std": 0.5}
    from PIL import Image

    names, outputs, args = [], [], []
    for k, name in enumerate(INC + PLAIN_ONLY):
        neg = k % 2 == 1
        s = Script(u=[0.3] + ([0.8 if neg else 0.2] if name in SIGNED else []), z=[1.2])
        ra.random = s
        recorded = []
        fn = ra.NAME_TO_OP[name]

        def rec(img, *a, _fn=fn, **kw):
            recorded.append(tuple(float(v) for v in a))
            return _fn(img, *a, **kw)
        ra.NAME_TO_OP[name] = rec
        try:
            op = ra.AugmentOp(name, prob=0.5, magnitude=7, hparams=hparams)
            imgs = op([Image.fromarray(f) for f in frames])
        finally:
            ra.NAME_TO_OP[name] = fn
            _restore(mods)
        assert s.exhausted() and len(set(recorded)) <= 1
        names.append(name)
        outputs.append(np.stack([np.asarray(i) for i in imgs]))
        args.append((name, 7 + 0.5 * 1.2, neg if name in SIGNED else False, recorded[0] if recorded else ()))
    return {"ops": {"frames": torch.from_numpy(frames.copy()), "img_size": 32,
                    "draws": args, "outputs": torch.from_numpy(np.stack(outputs))}}


def run_mixup(mods, *, mixup_alpha, cutmix_alpha, prob, u, beta, int_u):
    g = torch.Generator().manual_seed(7)
    x = torch.randn((4, 3, 3, 8, 10), generator=g)
    target = torch.tensor([0, 3, 1, 4])
    s = Script(u=list(u) + list(int_u), beta=beta)
    _patched(mods, "mixup", np_script=s)
    try:
        m = mods.mixup.Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=0.5,
                             mode="batch", label_smoothing=0.1, num_classes=5)
        x_out, soft = m(x.clone(), target)
    finally:
        _restore(mods)
    assert s.exhausted()
    return {"x": x, "target": target, "mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "prob": prob,
            "uniforms": s.u_log, "betas": s.beta_log, "ints": s.int_log, "x_out": x_out, "soft": soft}


def case_mixup(mods) -> dict:
    return {
        # mix (0.2 < 1), cutmix (0.3 < 0.5), lam 0.6, centre (7, 1): clipped at bottom and left.
        "mixup_cutmix": run_mixup(mods, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, u=[0.2, 0.3],
                                  beta=[0.6], int_u=[0.9, 0.15]),
        "mixup_blend": run_mixup(mods, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, u=[0.2, 0.7],
                                 beta=[0.35], int_u=[]),
        "mixup_skipped": run_mixup(mods, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, u=[0.8],
                                   beta=[], int_u=[]),
        "mixup_cutmix_only": run_mixup(mods, mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, u=[0.1],
                                       beta=[0.5], int_u=[0.5, 0.5]),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="extraction root or its single_modality folder")
    ap.add_argument("--out", default=os.path.join(HERE, "augment_official.pt"))
    ap.add_argument("--commit", default=None, help="official commit hash to record")
    args = ap.parse_args(argv)
    if not args.commit:
        print("WARNING: --commit not given; the file records official_commit=None", file=sys.stderr)
    mods = load_official(args.official)
    # The scripted op indices address the official op list, in its order.
    assert list(mods.rand_augment._RAND_INCREASING_TRANSFORMS) == INC
    import PIL
    import timm

    data = {"official_commit": args.commit, "official_files_sha256": mods.sha256,
            "versions": {"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__,
                         "numpy": np.__version__}}
    data.update(case_views(mods))
    data.update(case_ops(mods))
    data.update(case_mixup(mods))
    torch.save(data, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.3f} MB)")


if __name__ == "__main__":
    main()
