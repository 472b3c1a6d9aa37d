#!/usr/bin/env bash
# One-shot GPU check: run on a machine with one CUDA GPU (inside the project's Python environment); writes JSON to
# OUT_DIR and needs nothing from the internet. Target: under 8 minutes on one recent GPU.
#
#   scripts/device_check.sh OUT_DIR [--data-root DIR] [--weights FILE] [--g-steps N] [--fid-samples N]
#
#   OUT_DIR        where the JSON files go (created); OUT_DIR/device_check.json gathers them all
#   --data-root    folder holding MNIST/raw/*.gz (default $REGAN_DATA_ROOT); copied, never written to
#   --weights      offline Inception FID weights (default $REGAN_INCEPTION_WEIGHTS, else regan-fid-weights' cache file)
#   --g-steps      G steps of each MNIST training run (default 400)
#   --fid-samples  generated samples of the Inception FID check (default 10000)
#
# What it measures (each step's exit code and seconds in OUT_DIR/steps.tsv; a failed step does not stop the others):
#   env.json                 GPU name, torch / CUDA / cuDNN versions, driver
#   train_bf16.json          default DCGAN on MNIST, trainer=gpu at bf16-mixed: losses finite, FID decreasing
#   train_16mixed_r1.json    the same at 16-mixed with R1 (GradScaler + gradient penalty)
#   train_bf16_compile.json  the bf16 run with module.compile=true (end to end, compile time included)
#   bench_compile_gpu.json   step time per G step: eager GANModule, compiled GANModule, hand loop (bench_compile.py)
#   fid_10k.json             real-Inception FID of N generated samples (regan-eval; "seconds" = its wall time),
#   fid_10k_cached.json      ... and again with the real statistics cached
#   fid_agreement.json       regan-eval vs torch-fidelity on the same N generated / N real PNGs, same weights
#   train_ddp.json           a 1-GPU strategy=ddp (NCCL) run of 100 G steps
# Exit code 2 with one line where no GPU (or no data / weights) is present.
set -uo pipefail

usage() { sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "device_check.sh: $*" >&2; exit 2; }

OUT="" DATA_ROOT="${REGAN_DATA_ROOT:-}" WEIGHTS="${REGAN_INCEPTION_WEIGHTS:-}" G_STEPS=400 FID_N=10000
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --data-root|--weights|--g-steps|--fid-samples)
      [ $# -ge 2 ] || die "$1 needs a value (--help for usage)."
      case "$1" in
        --data-root) DATA_ROOT="$2" ;; --weights) WEIGHTS="$2" ;; --g-steps) G_STEPS="$2" ;; --fid-samples) FID_N="$2" ;;
      esac
      shift 2 ;;
    -*) die "unknown option $1 (--help for usage)." ;;
    *) [ -z "$OUT" ] || die "one OUT_DIR only, got '$OUT' and '$1' (--help for usage)."; OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || die "missing OUT_DIR, the folder to write the JSON to (--help for usage)."
[[ "$G_STEPS" =~ ^[1-9][0-9]*$ ]] && [ "$G_STEPS" -ge 4 ] || die "--g-steps must be an integer >= 4, got '$G_STEPS'."
[[ "$FID_N" =~ ^[1-9][0-9]*$ ]] && [ "$FID_N" -ge 2 ] || die "--fid-samples must be an integer >= 2, got '$FID_N'."

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO" || die "cannot enter $REPO."
PY="${PYTHON:-python}"

# The GPU first: one line and exit code 2 where there is none.
"$PY" scripts/device_check.py gpu-or-exit || exit 2

[ -n "$DATA_ROOT" ] || die "no MNIST folder: pass --data-root DIR (a folder holding MNIST/raw/*.gz) or set REGAN_DATA_ROOT."
ls "$DATA_ROOT"/MNIST/raw/*.gz >/dev/null 2>&1 || die "--data-root $DATA_ROOT holds no MNIST/raw/*.gz."
if [ -z "$WEIGHTS" ]; then
  WEIGHTS="$("$PY" -c 'from lightning_regan.fid.weights import converted_weights_path as p; print(p())')"
fi
[ -f "$WEIGHTS" ] || die "no Inception weights at '$WEIGHTS': pass --weights FILE (regan-fid-weights prepares it offline)."

mkdir -p "$OUT/logs" "$OUT/work/data/MNIST/raw" || die "cannot create $OUT."
OUT="$(cd "$OUT" && pwd)"
WORK="$OUT/work"
cp "$DATA_ROOT"/MNIST/raw/*.gz "$WORK/data/MNIST/raw/" || die "cannot copy MNIST from $DATA_ROOT."
export REGAN_INCEPTION_WEIGHTS="$WEIGHTS" REGAN_CACHE_DIR="$WORK/cache"
: > "$OUT/steps.tsv"

# step NAME TIMEOUT_S COMMAND...: run it with a time limit, log to logs/NAME.log, record the exit code and seconds.
step() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s)" >&2
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
  [ "$rc" -eq 0 ] || echo "   $name failed (exit $rc); see $OUT/logs/$name.log" >&2
  return 0
}

FID_EVERY=$((G_STEPS / 4))
TRAIN=(regan-train data=mnist "data.root=$WORK/data" trainer=gpu "max_g_steps=$G_STEPS" early_stopping=none
       "callbacks=[fid,checkpoint,summary]" "callbacks.fid.every_n_g_steps=$FID_EVERY" callbacks.fid.num_samples=2000
       "logger=[csv]" trainer.log_every_n_steps=10)

step env 60 "$PY" scripts/device_check.py env "$OUT/env.json"
step train_bf16 150 "${TRAIN[@]}" trainer.precision=bf16-mixed "hydra.run.dir=$OUT/runs/bf16"
step check_bf16 60 "$PY" scripts/device_check.py run-check "$OUT/runs/bf16" "$OUT/train_bf16.json"
step train_16mixed_r1 120 "${TRAIN[@]}" trainer.precision=16-mixed "regularizer=[r1]" "hydra.run.dir=$OUT/runs/fp16_r1"
step check_16mixed_r1 60 "$PY" scripts/device_check.py run-check "$OUT/runs/fp16_r1" "$OUT/train_16mixed_r1.json"
step train_bf16_compile 150 "${TRAIN[@]}" trainer.precision=bf16-mixed module.compile=true "hydra.run.dir=$OUT/runs/bf16_compile"
step check_bf16_compile 60 "$PY" scripts/device_check.py run-check "$OUT/runs/bf16_compile" "$OUT/train_bf16_compile.json"
step bench_compile 240 "$PY" scripts/bench_compile.py --device cuda --quick --setups dcgan_digits dcgan_digits28 mlp_ring \
  --out "$OUT/bench_compile_gpu.json"
CKPT="$OUT/runs/bf16/checkpoints/last.ckpt"
EVAL=(regan-eval "$CKPT" -n "$FID_N" --feature-extractor inception --data-root "$WORK/data" --no-progress
      --cache-dir "$WORK/cache" --device cuda)
step fid_10k 150 "${EVAL[@]}" --json "$OUT/fid_10k.json"
step fid_10k_cached 90 "${EVAL[@]}" --json "$OUT/fid_10k_cached.json"
step fid_agreement 180 "$PY" scripts/device_check.py fid-folders "$CKPT" "$WORK/data" "$WORK/fid" "$FID_N" "$OUT/fid_agreement.json"
step train_ddp 150 regan-train data=mnist "data.root=$WORK/data" trainer=ddp trainer.devices=1 max_g_steps=100 \
  early_stopping=none "callbacks=[fid,summary]" callbacks.fid.every_n_g_steps=50 callbacks.fid.num_samples=1000 \
  "logger=[csv]" "hydra.run.dir=$OUT/runs/ddp"
step check_ddp 60 "$PY" scripts/device_check.py run-check "$OUT/runs/ddp" "$OUT/train_ddp.json"
"$PY" scripts/device_check.py summarize "$OUT"
rm -rf "$WORK/data" "$WORK/fid"  # copies and PNGs: not results
echo "device_check.sh: done in ${SECONDS} s; results in $OUT/device_check.json" >&2
