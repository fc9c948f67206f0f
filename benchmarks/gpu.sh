#!/usr/bin/env bash
# The GPU benchmarks in one command (written for one H200 / H100 / A100), about 5 minutes,
# re-runnable at once (nothing is left behind but $OUT and /tmp).
#
#   here, once (PyPI access):  bash benchmarks/gpu_prepare.sh     # -> .whl/ .official/ .gpu/ (ignored)
#   on the lent H200:          the device tool's run with
#                                command  "bash benchmarks/gpu.sh"
#                                carry    [".whl", ".official", ".gpu"]
#                                timeout_s 420
#   on any GPU machine:        OUT=out/gpu bash benchmarks/gpu.sh
#   the parts a first call had no time for (names below):
#                              GPU_SH_PARTS="data_path compile" bash benchmarks/gpu.sh
#   smoke test on a CPU:       GPU_SH_DEVICE=cpu GPU_SH_PROFILE=smoke OUT=/tmp/gpu_smoke bash benchmarks/gpu.sh
#
# Installs nothing slow: the carried wheels go to /tmp/site with pip --no-index --no-deps (only
# when open_clip / omegaconf are missing). Parts, in priority order, each under its own time
# limit and all under GPU_SH_BUDGET seconds (default 285; a part that would start with less
# than 20 s left is skipped and logged):
#   stage1    Stage-1 step, ours vs the official train_one_epoch, B/16 (batch 64) and L/16
#             (batch 32), official fp16 (its choice) and bf16; clips/s, peak memory, MFU
#   stage2    Stage-2 step at B/16 (4 frames, BERT-base shape), video and image batches; MFU
#   finetune  fine-tune step at 8x224 / 16x224 per SDPA kernel and explicit attention (B/16,
#             batch 8); ITM re-ranking at B/16 (64 x 64, k 128)
#   scaling   Stage-1 step at B/16 (batch 16): 4/8/16 frames at 224, 8/16 frames at 320
#   data_path the b16 preset trained from carried shards with 0 / 4 / 12 DataLoader workers:
#             data_wait_frac, decode clips per core, cores needed at the measured rate
#   compile   torch.compile of the Stage-2 step, alternating image / video batches (B/16)
#   stage1_compile  ours with student + teacher compiled (train.compile=true) vs eager and the
#             official step at B/16, compile time included in the JSON
# Results under $OUT (at most 8 files come back from the device): gpu_results.json (every
# part's JSON merged, with the machine), log.txt, env.txt, scaling_gpu.png.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PARTS=$(mktemp -d /tmp/umt_gpu_parts.XXXXXX)
DEVICE=${GPU_SH_DEVICE:-cuda}
PROFILE=${GPU_SH_PROFILE:-gpu}
BUDGET=${GPU_SH_BUDGET:-285}
# the project venv where there is one (here), else the machine's python3 (the GPU image)
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
start=$(date +%s)
: >"$OUT/log.txt"
log() { echo "[gpu.sh +$(($(date +%s) - start))s] $*" | tee -a "$OUT/log.txt"; }

if ! "$PY" -c "import open_clip, omegaconf" 2>/dev/null; then
  [ -d .whl ] || { log "open_clip/omegaconf missing and no .whl/ carried (run benchmarks/gpu_prepare.sh)"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
[ -d .gpu/tokenizer ] && export UMT_BENCH_TOKENIZER=$PWD/.gpu/tokenizer
[ -f .official/COMMIT ] && export UMT_OFFICIAL_COMMIT=$(cat .official/COMMIT)
OFFICIAL=${UMT_OFFICIAL:-.official}
{
  date -u
  nvidia-smi 2>&1 || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  echo "cpus $(nproc)"
  free -g 2>/dev/null || true
} >"$OUT/env.txt" 2>&1
log "installed; $(tail -n +1 "$OUT/env.txt" | grep -m1 '^python')"

PARTS_WANTED=${GPU_SH_PARTS:-stage1 stage2 finetune scaling data_path compile stage1_compile}
part() { # part NAME LIMIT_S SCRIPT ARGS...: one benchmark, its JSON to $PARTS/NAME.json
  local name=$1 limit=$2
  shift 2
  case " $PARTS_WANTED " in *" $name "*) ;; *) return ;; esac
  local left=$((BUDGET - ($(date +%s) - start)))
  if [ "$left" -lt 20 ]; then
    log "$name: skipped (${left}s of the budget left)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name: start (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$PY" "$@" --json "$PARTS/$name.json" >>"$OUT/log.txt" 2>&1
  log "$name: exit $? ($((BUDGET - ($(date +%s) - start)))s left)"
}

if [ "$PROFILE" = smoke ]; then # the same parts at toy sizes, to check this script anywhere
  part stage1 200 benchmarks/bench_stage1_vs_official.py --official "$OFFICIAL" --device "$DEVICE" \
    --settings tiny --official-dtypes fp16 bf16 --steps 1 --rounds 1 --warmup 1 --no-memory
  part stage2 200 benchmarks/bench_stage2_step.py --device "$DEVICE" --settings tiny --batch 2 \
    --steps 1 --warmup 1
  part finetune 200 benchmarks/bench_finetune.py --device "$DEVICE" --sizes tiny --frames 1 \
    --attention sdpa explicit --videos 4 --texts 4 --k 2 --steps 1 --warmup 1
  part scaling 200 benchmarks/bench_scaling.py --device "$DEVICE" --width tiny --points 1x64 2x64 \
    --steps 1 --warmup 1 --no-memory
  part data_path 300 benchmarks/bench_data_path.py --datasets bbb-224 --source .gpu/bbb/dataset.json \
    --workers 0 --steps 2 --log-every 1
else
  part stage1 120 benchmarks/bench_stage1_vs_official.py --official "$OFFICIAL" --device "$DEVICE" \
    --settings b16 l16 --official-dtypes fp16 bf16 --steps 4 --rounds 2 --warmup 4
  part stage2 50 benchmarks/bench_stage2_step.py --device "$DEVICE" --settings b16 --steps 4 --warmup 2
  part finetune 45 benchmarks/bench_finetune.py --device "$DEVICE" --sizes base --frames 8 16 \
    --batch 8 --rerank-size b16 --videos 64 --texts 64 --k 128 --steps 3 --warmup 2
  part scaling 45 benchmarks/bench_scaling.py --device "$DEVICE" --width b16 --batch 16 --steps 3 --warmup 2
  part data_path 60 benchmarks/bench_data_path.py --datasets bbb-224 --model b16 \
    --source .gpu/bbb/dataset.json --workers 4 12 --steps 12 --log-every 4
  part compile 120 benchmarks/bench_compile.py --device "$DEVICE" --setting b16 --batch 32 \
    --strategies eager static --steps 3 --warmup 2
  part stage1_compile 150 benchmarks/bench_stage1_vs_official.py --official "$OFFICIAL" \
    --device "$DEVICE" --settings b16 --ours-variants compile --steps 4 --rounds 2 --warmup 3
fi

"$PY" - "$PARTS" "$OUT/gpu_results.json" <<'EOF' 2>&1 | tee -a "$OUT/log.txt"
import glob, json, os, sys
parts, out = sys.argv[1], sys.argv[2]
merged = {"parts": {}}
for f in sorted(glob.glob(os.path.join(parts, "*.json"))):
    with open(f) as fh:
        merged["parts"][os.path.basename(f)[:-5]] = json.load(fh)
with open(out, "w") as fh:
    json.dump(merged, fh, indent=1, default=str)
print("merged:", ", ".join(merged["parts"]) or "nothing", "->", out)
EOF
if [ -f "$PARTS/scaling.json" ]; then
  "$PY" benchmarks/bench_scaling.py --plot "$PARTS/scaling.json" --png "$OUT/scaling_gpu.png" >>"$OUT/log.txt" 2>&1
fi
rm -rf "$PARTS"
log "done"
