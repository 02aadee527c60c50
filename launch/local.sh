#!/usr/bin/env bash
# The main job on the embedded default, on CPU:
#   1. the tiny two-stage IIET (Transformer++, then IIET) on the stdlib corpus,
#   2. iteration influence of its IIET iterations and the E-IIET selection,
#   3. a short IIAD distillation into E-IIET, teacher vs student validation,
#   4. a sample from the student,
#   5. its export to a Hugging Face / PyTorch folder, scored by
#      lm-evaluation-harness on a small local task and checked against our
#      own JAX log-likelihoods.
#   bash launch/local.sh                     # all of the above, in runs/
#   bash launch/local.sh --config=... [--workdir=DIR] [--config.KEY=VALUE ...]
#                                            # step 1 only, for that config
# First run installs everything into ./.venv (about a minute). Runs live in
# their workdirs; running again resumes (or reports finished runs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# A CPU run: keeps JAX from probing for TPUs (libtpu is installed for the
# AOT check). Set JAX_PLATFORMS yourself to run on an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [ "$#" -gt 0 ]; then
  [[ " $* " == *" --config="* ]] || set -- --config=configs/lm.py:model=iiet,size=tiny "$@"
  [[ " $* " == *" --workdir="* ]] || set -- --workdir=runs/tiny "$@"
  exec python -m iiet_jax.main train "$@"
fi
CONFIG=configs/lm.py:model=iiet,size=tiny
echo "=== 1/5 pre-training: Transformer++ then IIET (runs/tiny)"
python -m iiet_jax.main train --config=$CONFIG --workdir=runs/tiny
echo "=== 2/5 iteration influence and the E-IIET selection"
python -m iiet_jax.main influence --workdir=runs/tiny --tau=0.05
echo "=== 3/5 IIAD distillation into E-IIET (runs/tiny_eiiet)"
python -m iiet_jax.main distill --config=$CONFIG --workdir=runs/tiny_eiiet \
  --config.distill.teacher=runs/tiny --config.distill.tau=0.05 \
  --config.total_steps=150 --config.optimizer.warmup_steps=10 \
  --config.eval_every=50 --config.checkpoint.every=50
echo "=== 4/5 a sample from the student"
python -m iiet_jax.main generate --workdir=runs/tiny_eiiet \
  --prompt="def main(" --max_new_tokens=48 --temperature=0.7 --top_p=0.9
echo "=== 5/5 export to PyTorch (runs/tiny_eiiet_hf), lm-eval, our check"
python -m iiet_jax.main export --workdir=runs/tiny_eiiet \
  --out=runs/tiny_eiiet_hf --overwrite
rm -rf runs/tiny_eiiet_lm_eval
(cd tests/lm_eval_task && HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  python -m lm_eval --model hf --device cpu --batch_size 8 \
  --model_args pretrained=../../runs/tiny_eiiet_hf,trust_remote_code=True,dtype=float32 \
  --tasks iiet_python_choice --include_path . \
  --output_path ../../runs/tiny_eiiet_lm_eval --log_samples) 2>&1 | grep '^|'
python -m iiet_jax.main score --workdir=runs/tiny_eiiet \
  --input="$(find runs/tiny_eiiet_lm_eval -name 'samples_*.jsonl' | head -1)"
