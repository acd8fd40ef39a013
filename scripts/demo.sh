#!/usr/bin/env bash
# `make demo`: the whole chain on the bundled Wikipedia sample, on 2 local CPU ranks.
#   1. bertperf prepare: the 206-page enwiki sample -> masked-LM/NSP shards (S=128, P=20)
#   2. deepspeed --num_gpus 2 bertperf/pretrain.py: a tiny BERT (L2 H128), ZeRO-2, fp32
#   3. where everything is, and the throughput
#   4. bertperf report: the run as markdown + an offline HTML page with plots (runs/demo/report/)
# Paths are relative to the repository root; the Makefile puts .venv/bin on PATH and sets
# TORCH_EXTENSIONS_DIR and the Open MPI root variables. DEMO_STEPS overrides the step count.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=runs/demo
SHARDS=$RUN/shards
VOCAB=.data/minilm/vocab.txt
SAMPLE=.data/enwiki-sample.xml.bz2
STEPS=${DEMO_STEPS:-300}
export HF_HUB_OFFLINE=1

start=$(date +%s)
echo "== 1/4 prepare: $SAMPLE -> $SHARDS (seq 128, 20 predictions, dupe factor 3)"
bertperf prepare --input "$SAMPLE" --vocab "$VOCAB" --output_dir "$SHARDS" \
    --max_seq_length 128 --max_predictions_per_seq 20 --dupe_factor 3 --quiet

echo "== 2/4 pre-train: tiny BERT, 2 ranks, ZeRO-2, $STEPS steps of 64 sequences (configs/ds-demo.json)"
rm -rf "$RUN/checkpoints" "$RUN/hf" "$RUN/tensorboard" "$RUN/metrics.csv" "$RUN/summary.json"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# the launcher's own INFO chatter is dropped; bertperf's lines and any warning or error pass
deepspeed --num_gpus 2 --master_port "$port" bertperf/pretrain.py \
    --deepspeed_config configs/ds-demo.json --model_config tiny --vocab "$VOCAB" \
    --data_dir "$SHARDS" --output_dir "$RUN" --max_steps "$STEPS" --log_every 25 \
    2>&1 | grep --line-buffered -v -E '\[INFO\]|Setting accelerator to CPU|Unable to find hostfile'

echo "== 3/4 summary"
python - "$RUN/summary.json" "$SHARDS" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
p = s["paths"]
print(f"shards:      {sys.argv[2]}/")
print(f"checkpoint:  {p['checkpoint']}/   (continue with the same command plus --resume and a larger --max_steps)")
print(f"HF export:   {p['hf']}/")
print(f"metrics:     {p['metrics_csv']}, TensorBoard: tensorboard --logdir {p['tensorboard']}")
n = s["log_every"]
print(f"loss:        {s['loss_first']:.3f} (mean of steps 1-{n}) -> {s['loss_last']:.3f} (mean of the last logged "
      f"steps up to {s['steps'][1]}); MLM accuracy {s['mlm_acc_last']:.3f}")
print(f"throughput:  {s['seq_per_s']:.1f} sequences/s over {s['world_size']} ranks x {s['threads_per_rank']} threads, "
      f"{s['tflops'] * 1000:.2f} GFLOP/s achieved ({s['flops_per_sequence'] / 1e9:.2f} GFLOP per sequence)")
print(f"demo time:   {sys.argv[3]} s")
EOF

echo "== 4/4 report"
bertperf report "$RUN" --out "$RUN/report"
echo "open $RUN/report/report.html in a browser (self-contained, works offline)"
