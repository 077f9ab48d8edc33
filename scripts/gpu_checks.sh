#!/usr/bin/env bash
# GPU checks for the speed targets of docs/benchmark.md, one run of under 8 minutes on one H100 / H200.
#
#   OUT=/path/to/results bash scripts/gpu_checks.sh          # on the GPU machine, from the repository root
#   GPU_CHECKS_DRY_RUN=1 OUT=/tmp/x bash scripts/gpu_checks.sh  # on CPU: tiny model, short lengths (tests the script)
#
# Needs torch, transformers, accelerate, safetensors (no datasets / evaluate / matplotlib; nothing is installed,
# nothing is downloaded). Sections run in priority order, each in its own process with its own time limit, and
# each writes its JSON as soon as it finishes, so a slow or failing section costs only itself. Under $OUT:
#   env.txt                 GPU, driver, torch / transformers versions
#   agreement.json/.log     fast paths vs eager in bf16 (SDPA, FlexAttention, cache decoding, compiled training)
#   train_eager.json        every encoding + hf:llama / hf:gpt2 / hf:bloom, 8 x 2048 tokens, eager mode
#   train_compiled.json     rope and hf:llama under torch.compile (and eager, in the same interleaved rounds)
#   decode.json             generate with the dynamic cache, batch 1 and 32, every model
#   scaling.json/.png       eval and train time / memory from 1k to 16k tokens, every encoding (auto attention)
#   decode_static.json      rope with a static cache + compiled decoding (reduce-overhead)
#   train_bias_sdpa.json    alibi / t5_bias on SDPA's dense-bias path, next to nope (for the flex vs SDPA choice)
#   *_summary.json, summary.json, summary.txt   targets met / missed, per section and together
#   sections.txt            exit code and wall time of every section
set -u

OUT=${OUT:-$PWD/gpu_checks_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-$(command -v python || command -v python3)}
START=$(date +%s)

if [ "${GPU_CHECKS_DRY_RUN:-0}" = "1" ]; then
    # CPU rehearsal: same sections and flags, a model and workload small enough for a laptop
    TOTAL=${GPU_CHECKS_TOTAL_S:-1500}
    DEVICE=(--device cpu)
    BENCH=(--preset tiny --threads 1 --seq-len 64 --batch 2 --steps 2 --warmup 1)
    DECODE=(--decode-new-tokens 4 --decode-prompt-len 8 --decode-batches 1,2 --decode-repeats 1)
    SCALING=(--scaling-lengths 64,128,256 --scaling-repeats 1)
    AGREE=(--device cpu --dtype float32 --backends sdpa --length 32 --compile-encodings "")
    PEAK=()
else
    TOTAL=${GPU_CHECKS_TOTAL_S:-450}
    DEVICE=(--device cuda)
    BENCH=(--preset small-125m --steps 5 --warmup 2)
    DECODE=(--decode-new-tokens 64 --decode-prompt-len 128 --decode-batches 1,32 --decode-repeats 1)
    SCALING=(--scaling-lengths 1024,2048,4096,8192,16384 --scaling-repeats 2)
    AGREE=(--device cuda --dtype bfloat16 --backends sdpa,flex_attention --length 256
           --compile-encodings rope,alibi,t5_bias)
    PEAK=(--measure-peak)
fi
# per-layer patterns last: they reuse the parts' kernels, so a section that runs out of time loses them first
ENCODINGS_BIAS_FIRST=alibi,t5_bias,kerple_log,kerple_power,fire,sandwich,dynamic_bias,rope,xpos,nope,sinusoidal,learned,rope+rope+rope+nope,alibi+rope

# section NAME NOMINAL_LIMIT_S MIN_S COMMAND...: run with min(nominal, time left - 10 s); skip if under MIN_S left
section() {
    local name=$1 nominal=$2 minimum=$3
    shift 3
    local left=$(( TOTAL - ($(date +%s) - START) - 10 ))
    local limit=$(( nominal < left ? nominal : left ))
    if [ "$limit" -lt "$minimum" ]; then
        echo "$name skipped: ${left}s left of ${TOTAL}s" | tee -a "$OUT/sections.txt"
        return
    fi
    echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed)"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc limit=${limit}s elapsed=$(( $(date +%s) - START ))s" | tee -a "$OUT/sections.txt"
    tail -n 30 "$OUT/$name.log"
}

# (an array, not a shell function: `timeout` runs programs only)
BENCH_CMD=("$PY" -m hf_posenc.cli.bench --no-progress "${DEVICE[@]}")

{
    date -u
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__); print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. Training throughput, MFU and peak memory of every encoding and the references (eager mode; bias encodings
#    on FlexAttention through --attn auto). Decides: >= 0.9x nope, alibi >= 2x Bloom, bias memory <= 1.1x nope.
section train_eager 150 40 "${BENCH_CMD[@]}" "${BENCH[@]}" ${PEAK[@]+"${PEAK[@]}"} --modes train --encodings "$ENCODINGS_BIAS_FIRST" \
    --time-budget-s 100 --output "$OUT/train_eager.json" --summary "$OUT/train_eager_summary.json"

# 2. Fast paths vs eager in bf16 (cheapest first; stops starting new checks after its budget).
section agreement 100 30 "$PY" -m hf_posenc.bench.agreement "${AGREE[@]}" --encodings "$ENCODINGS_BIAS_FIRST" \
    --flex-encodings alibi,t5_bias,kerple_log,kerple_power,fire,sandwich,dynamic_bias,nope --time-budget-s 65 --output "$OUT/agreement.json"

# 3. torch.compile: rope vs hf:llama, both compiled and eager, in the same rounds.
#    Decides: compiled rope >= 1.0x compiled Llama, >= 1.4x eager Llama, MFU >= 45%.
section train_compiled 200 90 "${BENCH_CMD[@]}" "${BENCH[@]}" ${PEAK[@]+"${PEAK[@]}"} --modes train --encodings rope,nope --references hf:llama \
    --compile-models hf_posenc:rope,hf:llama --time-budget-s 150 \
    --output "$OUT/train_compiled.json" --summary "$OUT/train_compiled_summary.json"

# 4. Decoding with the dynamic cache, every model. Decides: batch 1 >= 5 x 17 tokens/s.
section decode 80 25 "${BENCH_CMD[@]}" "${BENCH[@]}" "${DECODE[@]}" --modes decode --decode-cache dynamic \
    --encodings "$ENCODINGS_BIAS_FIRST" --time-budget-s 50 \
    --output "$OUT/decode.json" --summary "$OUT/decode_summary.json"

# 5. Time and memory against length, 1k to 16k tokens. Decides: 16k eval of alibi / t5_bias fits.
section scaling 90 30 "${BENCH_CMD[@]}" "${BENCH[@]}" "${SCALING[@]}" --modes scaling --encodings "$ENCODINGS_BIAS_FIRST" \
    --scaling-kinds eval,train --time-budget-s 60 \
    --output "$OUT/scaling.json" --plot "$OUT/scaling.png" --summary "$OUT/scaling_summary.json"

# 6. Static cache + compiled decoding step (transformers compiles it with reduce-overhead on CUDA).
section decode_static 70 30 "${BENCH_CMD[@]}" "${BENCH[@]}" "${DECODE[@]}" --modes decode --decode-cache static --decode-batches 1 \
    --encodings rope --references none --compile \
    --output "$OUT/decode_static.json" --summary "$OUT/decode_static_summary.json"

# 7. If time is left: the bias encodings on SDPA's dense per-head bias, next to nope (what --attn sdpa costs).
section train_bias_sdpa 60 25 "${BENCH_CMD[@]}" "${BENCH[@]}" --modes train --encodings nope,alibi,t5_bias,kerple_log,fire,sandwich,dynamic_bias --references none \
    --attn sdpa --time-budget-s 20 --output "$OUT/train_bias_sdpa.json" --summary "$OUT/train_bias_sdpa_summary.json"

"$PY" scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/sections.txt"
