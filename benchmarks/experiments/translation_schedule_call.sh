#!/bin/bash
# One 10-minute GPU call (JAX, no TensorFlow) for issue 20: training schedules of the translation grid's
# concatenated full-width baseline (translation_bible.py, transformer_small, seed 0) side by side, to pick the
# one schedule the converged grid then runs for every row ("the learning rate schedule tuned on the
# concatenated baseline once"). SCHEDULES: comma-separated BATCH:LR:STEPS:WARMUP, one process each (default:
# batch 384 at three learning rates, about 50 epochs). The validation loss is computed at every tenth of the
# steps, so a run's curve says whether its last 20 % was flat. From the repository root, with the device tool:
#   run(command="bash benchmarks/experiments/translation_schedule_call.sh", carry=[".whl",
#       ".data/nmt-bible-small"], timeout_s=600)
# Records (each run's folder without checkpoints/ and model/, packed every 45 s so a call cut short still
# returns them) come back as $OUT/schedules.tgz: unpack into benchmarks/results/<date>-gpu-translation-schedules.
S=${CALL_SECONDS:-540}
SCHEDULES=${SCHEDULES:-384:1e-3:4000:400,384:2e-3:4000:400,384:3e-3:4000:400,384:2e-3:6000:600}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p /tmp/sched
. benchmarks/experiments/xla_flags.sh /tmp/sched/flags.txt
(while sleep 45; do
  tar czf $OUT/schedules.tgz.new --exclude=checkpoints --exclude=model -C /tmp/sched . && mv $OUT/schedules.tgz.new $OUT/schedules.tgz
done 2>/dev/null) &
PACK=$!
# Each process preallocates its share of the card: together 0.8 of it (four processes at 0.8 each ran out of
# memory or failed to start on 2026-12-08).
N=$(echo ${SCHEDULES//,/ } | wc -w)
SHARE=$(python3 -c "print(round(0.8 / $N, 3))")
for schedule in ${SCHEDULES//,/ }; do
  IFS=: read -r batch lr steps warmup <<< "$schedule"
  name=batch${batch}_lr${lr}_steps${steps}_warmup${warmup}
  timeout $S python3 benchmarks/experiments/translation_bible.py --data .data/nmt-bible-small \
    --output-dir /tmp/sched/$name --seeds 1 --kinds concatenate --key-sizes 256 --parallel 1 --memory-share $SHARE \
    --steps $steps --checkpoint-every $((steps / 10)) --batch-size $batch --learning-rate $lr \
    --warmup-steps $warmup --label-smoothing 0.1 --mixed-precision > /tmp/sched/$name.log 2>&1 &
done
(sleep $((S / 2)); nvidia-smi > /tmp/sched/smi.txt) &
wait $(jobs -p | grep -v "^$PACK$")
kill $PACK 2>/dev/null
tar czf $OUT/schedules.tgz --exclude=checkpoints --exclude=model -C /tmp/sched .
rm -f $OUT/*.new
# The table: each schedule's validation loss at every tenth of its steps, then its test BLEU.
python3 - <<'EOF'
import glob, json, os
for folder in sorted(glob.glob("/tmp/sched/batch*/runs/*/")):
    name = folder.split("/")[3]
    curve = os.path.join(folder, "learning_curves.jsonl")
    rows = [json.loads(line) for line in open(curve)] if os.path.exists(curve) else []
    losses = " ".join(f"{r['val_loss']:.3f}" for r in rows if r.get("val_loss") is not None)
    metrics = os.path.join(folder, "metrics.json")
    final = json.load(open(metrics))["final"] if os.path.exists(metrics) else {}
    seconds = rows[-1].get("seconds") if rows else None
    print(f"{name}: val {losses or '-'} | BLEU {final.get('bleu', '-')} | {seconds} s, "
          f"{final.get('steps_per_second', '-')} steps/s")
EOF
