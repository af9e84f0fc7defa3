#!/usr/bin/env bash
# Speed per chip on one GPU: simclr_jax's pretraining step vs the plain-PyTorch reference
# (bench/pytorch_reference.py: same ResNet-50, head, probe, NT-Xent and LARS; channels_last,
# bf16 autocast, torch.compile), ResNet-50 1x at 224 px in bfloat16, at the largest per-GPU batch
# that fits. Prints one row per (implementation, batch): step time, images/s, analytic MFU and
# peak device memory.
#
#   bash bench/gpu.sh [--batches=128,256,512] [--steps=10] [--warmup=2] [--timeout=420]
#                     [--only=ours|torch] [--no-compile] [--compile_backend=inductor]
#                     [--depth=50] [--width=1]
#                     [--image_size=224] [--dtype=bfloat16] [--proj_layers=2] [--probe_classes=1000]
#   bash bench/gpu.sh --cpu-smoke     # the same path on the CPU with a tiny model (< ~2 min)
#
# Expects a machine with jax[cuda], flax, optax, orbax-checkpoint and torch (torchvision is not
# needed), and NO TensorFlow, clu or ml_collections: nothing below imports TF or clu, and
# ml_collections (configs/*.py need it) is installed from bench/wheels when missing. To refresh
# that wheel on a machine with network access:
#   pip download ml_collections==1.1.0 --no-deps -d bench/wheels
# and it installs offline with
#   pip install --no-index --find-links bench/wheels ml_collections
# (its dependencies absl-py and PyYAML come with orbax-checkpoint).
#
# Batch search: each batch runs in a fresh process (a failed allocation leaves nothing behind);
# batches are tried in the order given and the search stops at the first out-of-memory (JAX
# RESOURCE_EXHAUSTED / torch OutOfMemoryError), so give them ascending. Each try compiles anew
# (XLA: about a minute for R50; torch.compile: one to two minutes), so on a 15-minute device
# budget pass fewer batches (e.g. --batches=256,512 --steps=10).
#
# What is compared: one device each (CUDA_VISIBLE_DEVICES is left alone, but ours builds a
# one-device mesh). "batch" is images per step; each image is 2 views, so the network sees
# 2 x batch images. Ours: configs/imagenet.py (R50, bf16, 2-layer head, tau 0.1, LARS) with the
# fields above overridden, a synthetic uint8 batch already on the device, the jitted
# steps.train_step with the state donated, as bench/train_step.py times it. Torch: the reference
# with the same depth/width/head/probe. FLOPs: simclr_jax/plan/flops.py's analytic count (conv and
# dense MACs x 2, training = 3x forward less the image's input gradient, plus the NT-Xent
# matmuls), the same figure for both; peak: simclr_jax/plan/chips.py's dense bf16 figure for the
# device (H200 SXM: 989 TFLOP/s), or on the CPU a measured float32 matmul peak.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"

SMOKE=0
BATCHES="128,256,512"
STEPS=10
WARMUP=2
RUN_TIMEOUT=420
ONLY=""
COMPILE=1
COMPILE_BACKEND=inductor
DEPTH=50
WIDTH=1
IMAGE_SIZE=224
DTYPE=bfloat16
PROJ_LAYERS=2
PROBE_CLASSES=1000
DEVICE=cuda

for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    --batches=*) BATCHES="${arg#*=}" ;;
    --steps=*) STEPS="${arg#*=}" ;;
    --warmup=*) WARMUP="${arg#*=}" ;;
    --timeout=*) RUN_TIMEOUT="${arg#*=}" ;;
    --only=*) ONLY="${arg#*=}" ;;
    --no-compile) COMPILE=0 ;;
    --compile_backend=*) COMPILE_BACKEND="${arg#*=}" ;;
    --depth=*) DEPTH="${arg#*=}" ;;
    --width=*) WIDTH="${arg#*=}" ;;
    --image_size=*) IMAGE_SIZE="${arg#*=}" ;;
    --dtype=*) DTYPE="${arg#*=}" ;;
    --proj_layers=*) PROJ_LAYERS="${arg#*=}" ;;
    --probe_classes=*) PROBE_CLASSES="${arg#*=}" ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$SMOKE" == 1 ]]; then
  # The same path on the CPU: a ResNet-10 (basic blocks, one per group) at 1/8 width on 40 px (> 32: the ImageNet stem and
  # max pool, as at 224), batch 4 then 8; batch 8 is refused by a simulated out-of-memory error
  # so the search and its stop are exercised without a second compile. torch.compile traces
  # with the aot_eager backend (graph capture and AOTAutograd, no code generation): inductor's
  # C++ code generation takes minutes on 2 cores.
  DEVICE=cpu; COMPILE_BACKEND=aot_eager
  DEPTH=10; WIDTH=0.125; IMAGE_SIZE=40; BATCHES="4,8"; STEPS=2; WARMUP=1; RUN_TIMEOUT=150
  PROJ_LAYERS=2; PROBE_CLASSES=10
  export SIMCLR_BENCH_FAKE_OOM_ABOVE=4
  export JAX_PLATFORMS=cpu
  export CUDA_VISIBLE_DEVICES=""
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
# JAX pre-allocates 75% of the GPU by default; let it take what torch can take.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"

# ---- ml_collections (configs need it; the GPU image lacks it) ----
if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  if compgen -G "$ROOT/bench/wheels/ml_collections-*.whl" >/dev/null; then
    echo "installing ml_collections from bench/wheels" >&2
    "$PY" -m pip install -q --no-index --find-links "$ROOT/bench/wheels" ml_collections >&2
  else
    echo "gpu.sh: ml_collections is missing and bench/wheels has no wheel of it; on a machine" \
         "with network access run: pip download ml_collections==1.1.0 --no-deps -d bench/wheels" >&2
    exit 1
  fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/simclr_gpu_bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

echo "== bench/gpu.sh: depth=$DEPTH width=$WIDTH image_size=$IMAGE_SIZE dtype=$DTYPE" \
     "proj_layers=$PROJ_LAYERS probe_classes=$PROBE_CLASSES batches=$BATCHES steps=$STEPS" \
     "device=$DEVICE torch.compile=$([[ $COMPILE == 1 ]] && echo $COMPILE_BACKEND || echo off)" \
     "smoke=$SMOKE"
if [[ "$DEVICE" == cuda ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# ---- ours: the jitted simclr_jax train step in a fresh process; one JSON line on stdout ----
run_ours() {
  BENCH_BATCH="$1" BENCH_DEPTH="$DEPTH" BENCH_WIDTH="$WIDTH" BENCH_IMAGE_SIZE="$IMAGE_SIZE" \
  BENCH_DTYPE="$DTYPE" BENCH_PROJ_LAYERS="$PROJ_LAYERS" BENCH_PROBE_CLASSES="$PROBE_CLASSES" \
  BENCH_STEPS="$STEPS" BENCH_WARMUP="$WARMUP" \
  timeout "$RUN_TIMEOUT" "$PY" - <<'PY'
import functools, json, os, resource, statistics, sys, time
e = os.environ
batch = int(e['BENCH_BATCH'])
fake = int(e.get('SIMCLR_BENCH_FAKE_OOM_ABOVE', '0') or 0)
if fake and batch > fake:
  sys.exit('RESOURCE_EXHAUSTED: simulated out of memory (SIMCLR_BENCH_FAKE_OOM_ABOVE)')
import jax
import numpy as np
assert 'tensorflow' not in sys.modules
from configs import imagenet
from simclr_jax import models, optim, sharding, steps as steps_lib
config = imagenet.get_config()
with config.unlocked():
  config.model.resnet_depth = int(e['BENCH_DEPTH'])
  config.model.width_multiplier = float(e['BENCH_WIDTH'])
  config.model.dtype = e['BENCH_DTYPE']
  config.model.num_proj_layers = int(e['BENCH_PROJ_LAYERS'])
  config.data.image_size = int(e['BENCH_IMAGE_SIZE'])
  config.train.batch_size = batch
  config.train.lineareval_while_pretraining = int(e['BENCH_PROBE_CLASSES']) > 0
  config.train.steps = 1000
device = jax.devices()[0]
mesh = sharding.make_mesh([device])
num_examples = 1_281_167
model = models.build_model(config, max(int(e['BENCH_PROBE_CLASSES']), 1))
tx = optim.create_optimizer(config, num_examples)
s = config.data.image_size
state = jax.jit(lambda key: steps_lib.create_train_state(key, model, tx, (s, s, 3)),
                out_shardings=sharding.replicated(mesh))(jax.random.key(0))
lr_fn = optim.create_learning_rate_fn(config, num_examples)
step = jax.jit(functools.partial(steps_lib.train_step, config=config, lr_fn=lr_fn, mesh=mesh),
               donate_argnums=(0,))
rng = np.random.RandomState(0)
data = sharding.global_batch(
    {'views': rng.randint(0, 256, (batch, 2, s, s, 3), np.uint8),
     'label': rng.randint(0, max(int(e['BENCH_PROBE_CLASSES']), 1), (batch,)).astype(np.int32)},
    mesh)
t = time.perf_counter()
state, m = step(state, data)
jax.block_until_ready(m)
compile_s = time.perf_counter() - t
for _ in range(int(e['BENCH_WARMUP'])):
  state, m = step(state, data)
jax.block_until_ready(m)
times = []
for _ in range(int(e['BENCH_STEPS'])):
  t = time.perf_counter()
  state, m = step(state, data)
  jax.block_until_ready(m)
  times.append(time.perf_counter() - t)
med = statistics.median(times)
stats = device.memory_stats() or {}
print(json.dumps({
    'impl': 'ours (jax)', 'batch': batch, 'step_s': med, 'step_s_min': min(times),
    'step_s_max': max(times), 'images_per_s': batch / med, 'compile_s': compile_s,
    'peak_memory_bytes': stats.get('peak_bytes_in_use'),
    'peak_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    'device_kind': device.device_kind, 'loss': float(m['contrast_loss'])}))
PY
}

# ---- the PyTorch reference in a fresh process; one JSON line on stdout ----
run_torch() {
  local batch="$1"
  if [[ -n "${SIMCLR_BENCH_FAKE_OOM_ABOVE:-}" && "$batch" -gt "$SIMCLR_BENCH_FAKE_OOM_ABOVE" ]]; then
    echo "torch.OutOfMemoryError: simulated out of memory (SIMCLR_BENCH_FAKE_OOM_ABOVE)" >&2
    return 1
  fi
  local flags=(--depth="$DEPTH" --width="$WIDTH" --image_size="$IMAGE_SIZE" --batch="$batch"
               --dtype="$DTYPE" --steps="$STEPS" --warmup_steps="$WARMUP" --channels_last
               --proj_layers="$PROJ_LAYERS" --probe_classes="$PROBE_CLASSES" --device="$DEVICE")
  [[ "$COMPILE" == 1 ]] && flags+=(--compile --compile_backend="$COMPILE_BACKEND")
  timeout "$RUN_TIMEOUT" "$PY" "$ROOT/bench/pytorch_reference.py" "${flags[@]}"
}

# ---- batch search: ascending, stop at the first out-of-memory ----
search() {
  local name="$1" fn="$2" b rc
  IFS=',' read -r -a list <<< "$BATCHES"
  for b in "${list[@]}"; do
    echo "-- $name batch $b" >&2
    set +e
    "$fn" "$b" > "$WORK/out.txt" 2> "$WORK/err.txt"
    rc=$?
    set -e
    if [[ $rc == 0 ]] && tail -n 1 "$WORK/out.txt" | grep -q '^{'; then
      tail -n 1 "$WORK/out.txt" | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read()); \
r.setdefault('impl', '$name'); r['impl_key'] = '$name'; print(json.dumps(r))" >> "$RESULTS"
      tail -n 1 "$RESULTS" | cut -c1-300 >&2
    elif grep -q -i -E 'RESOURCE_EXHAUSTED|out of memory|OutOfMemoryError' "$WORK/err.txt"; then
      echo "   $name: out of memory at batch $b; largest that fits is the previous one" >&2
      echo "{\"impl_key\": \"$name\", \"batch\": $b, \"oom\": true}" >> "$RESULTS"
      break
    else
      echo "   $name: batch $b failed (exit $rc)$([[ $rc == 124 ]] && echo ': timed out'):" >&2
      tail -n 15 "$WORK/err.txt" >&2
      echo "{\"impl_key\": \"$name\", \"batch\": $b, \"error\": \"exit $rc\"}" >> "$RESULTS"
      break
    fi
  done
}

[[ "$ONLY" != torch ]] && search ours run_ours
[[ "$ONLY" != ours ]] && search torch run_torch

# ---- the table: analytic FLOPs, MFU, memory ----
BENCH_DEPTH="$DEPTH" BENCH_WIDTH="$WIDTH" BENCH_IMAGE_SIZE="$IMAGE_SIZE" \
BENCH_PROJ_LAYERS="$PROJ_LAYERS" BENCH_PROBE_CLASSES="$PROBE_CLASSES" BENCH_DEVICE="$DEVICE" \
JAX_PLATFORMS=cpu "$PY" - "$RESULTS" <<'PY'
import json, os, sys
e = os.environ
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
from configs import imagenet
from simclr_jax import models
from simclr_jax.plan import chips, flops
config = imagenet.get_config()
with config.unlocked():
  config.model.resnet_depth = int(e['BENCH_DEPTH'])
  config.model.width_multiplier = float(e['BENCH_WIDTH'])
  config.model.num_proj_layers = int(e['BENCH_PROJ_LAYERS'])
  config.data.image_size = int(e['BENCH_IMAGE_SIZE'])
  config.train.lineareval_while_pretraining = int(e['BENCH_PROBE_CLASSES']) > 0
s = config.data.image_size
found = flops.layers(models.build_model(config, max(int(e['BENCH_PROBE_CLASSES']), 1)), (s, s, 3))
kinds = [r.get('device_kind') or r.get('device_name') for r in rows]
kind = next((k for k in kinds if k), None)
if e['BENCH_DEVICE'] == 'cpu':
  chip = chips.get('cpu')
else:
  key = chips.key_for_device_kind(kind) if kind else None
  chip = chips.get(key) if key else None
peak = chip.peak_flops if chip else None
print(f'device: {kind or e["BENCH_DEVICE"]}; peak for MFU: '
      f'{f"{peak / 1e12:.4g} TFLOP/s ({chip.name})" if peak else "unknown (no MFU)"}')
print(f'FLOPs per image (2 views, fwd+bwd, analytic): '
      f'{2 * flops.train_flops_per_view(found) / 1e9:.4g} GFLOP')
hdr = (f'{"impl":<12} {"batch":>6} {"step s":>8} {"min s":>8} {"max s":>8} {"images/s":>9} '
       f'{"TFLOP/step":>10} {"MFU %":>7} {"peak GiB":>9} {"compile s":>9}')
print(hdr)
print('-' * len(hdr))
best = {}
for r in rows:
  name = r['impl_key']
  if r.get('oom') or r.get('error'):
    print(f'{name:<12} {r["batch"]:>6} {"OOM" if r.get("oom") else r["error"]:>8}')
    continue
  total = flops.step_flops(found, r['batch'], config.model.proj_out_dim)['total']
  mfu = 100 * total / r['step_s'] / peak if peak else float('nan')
  mem = r.get('peak_memory_bytes')
  mem_s = f'{mem / 2**30:9.2f}' if mem else f'{"rss " + format(r["peak_rss_bytes"] / 2**30, ".1f"):>9}'
  print(f'{name:<12} {r["batch"]:>6} {r["step_s"]:>8.4f} {r["step_s_min"]:>8.4f} '
        f'{r["step_s_max"]:>8.4f} {r["images_per_s"]:>9.1f} {total / 1e12:>10.4g} {mfu:>7.3g} '
        f'{mem_s} {r["compile_s"]:>9.1f}')
  if r['images_per_s'] > best.get(name, {}).get('images_per_s', 0):
    best[name] = r
if 'ours' in best and 'torch' in best:
  o, t = best['ours'], best['torch']
  print(f'best: ours {o["images_per_s"]:.1f} images/s (batch {o["batch"]}), torch '
        f'{t["images_per_s"]:.1f} images/s (batch {t["batch"]}): ours/torch = '
        f'{o["images_per_s"] / t["images_per_s"]:.2f}')
PY
