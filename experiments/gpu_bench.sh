#!/usr/bin/env bash
# The GPU run of experiments/bench.py: resnet50 at 224x224 and the two CIFAR nets at 32x32, batch 128,
# fp32 and bf16, jresnet against the plain Flax reference and PyTorch on the same GPU.
#
#   bash experiments/gpu_bench.sh OUTDIR            # OUTDIR gets a .json and a .log (its tables at the end) per stage
#
# PYTHON (default python3) must have JAX with its CUDA plugin and torch with CUDA (a GPU host's image
# usually has both in one environment; TORCH_PYTHON picks another for torch). Stages run most important first, each under a time limit that
# fits what is left of BUDGET_S (default 540 s), so a short lease still returns the first stages' files.
# Workers start side by side (--start-together: a GPU host has many cores); compile s then overlap.
# QUICK=1 runs a tiny version (resnet20, batch 8, one round) to check the script on any machine.
# BENCH_ARGS adds options to every stage, e.g. BENCH_ARGS=--torch-cudnn-benchmark.
set -u
out=${1:?usage: gpu_bench.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
budget=${BUDGET_S:-540}
t0=$SECONDS
status=0  # 1 if any stage failed or was cut off
here=$(cd "$(dirname "$0")" && pwd)

"$py" - <<'EOF' 2>&1 | tee "$out/environment.txt"
import platform, jax, flax, optax
print("python", platform.python_version(), "| jax", jax.__version__, "| flax", flax.__version__, "| optax",
      optax.__version__)
print("jax devices:", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except ImportError as err:
    print("torch: not importable:", err)
import jresnet
print("jresnet from", jresnet.__file__)
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv | tee -a "$out/environment.txt"

if [ "${QUICK:-0}" = 1 ]; then
  common=(--batch 8 --repeats 1 --steps 1 --quiet 0 --start-together --torch-python "${TORCH_PYTHON:-$py}")
  stages=("quick:300:--models resnet20 --dtype fp32 --variants jresnet,flax-ref,torch-eager_cl")
else
  common=(--batch 128 --repeats 5 --quiet 0 --start-together --matmul-n 8192 --torch-python "${TORCH_PYTHON:-$py}")
  stages=(
    "resnet50:240:--models resnet50 --dtype bf16,fp32 --steps 5 --variants jresnet,flax-ref,torch-eager,torch-eager_cl"
    "cifar:170:--models resnet20,resnet18_cifar --dtype bf16,fp32 --steps 20 --variants jresnet,flax-ref,torch-eager,torch-eager_cl"
    "resnet50-compile:200:--models resnet50 --dtype bf16,fp32 --steps 5 --variants jresnet,torch-eager_cl,torch-compile_cl"
  )
fi

for stage in "${stages[@]}"; do
  name=${stage%%:*}; rest=${stage#*:}; limit=${rest%%:*}; args=${rest#*:}
  left=$((budget - (SECONDS - t0)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 45 ]; then echo "== $name: skipped, ${left}s left"; status=1; continue; fi
  echo "== $name: up to ${limit}s: $args"
  # shellcheck disable=SC2086  # $args is a list of options
  timeout "$limit" "$py" "$here/bench.py" $args ${BENCH_ARGS:-} "${common[@]}" --json "$out/$name.json" >"$out/$name.log" 2>&1
  code=$?  # timeout signals its whole process group, so a stage cut off leaves no worker behind
  echo "== $name: exit $code after $((SECONDS - t0))s"
  [ "$code" -ne 0 ] && status=1
  tail -n 40 "$out/$name.log" | grep -v '^\[' | head -n 30
done
exit "$status"
