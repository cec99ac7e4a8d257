#!/bin/bash
# One 10-minute GPU call (JAX, no TensorFlow) for issues 20 and 25: the zoo's translator grid
# (translation_bible.py: transformer_small, 5,000 steps, concatenated and collaborative heads at the key widths
# TB_SIZES, TB_SEEDS seeds each, the full-width baseline included) beside issue 25's controlled runs
# (translation_recipe.py: GRID_VARIANTS x GRID_SEEDS, 10 epochs). Runs whose records are committed
# (benchmarks/results/gpu-translation-grid/runs/, benchmarks/results/gpu-recipe-grid/) are read, not trained
# again; after a call unpack tb.tgz's runs/ into the first and records.tgz into the second and commit them.
# The defaults are the translation grid's widths 64 and 32 (seeds 0-2: 10 runs, all committed now, so the call
# trains nothing) and no controlled runs (issue 25 is concluded; docs/results.md section 4).
# From the repository root, with the device tool:
#   run(command="bash benchmarks/experiments/recipe_gpu_call.sh", carry=[".whl", ".data/nmt-bible-small",
#       ".data/translation_recipe"], timeout_s=600)   (all of .data/ is over the 64 MiB a call carries)
# where .whl comes from ../shared/tools/device-wheels.sh, .data/translation_recipe from
# `translation_recipe.py prepare` and .data/nmt-bible-small from `collab-keras prepare nmt --preset
# transformer_small --sequence-length 128 --vocabulary-size 8000`. What there is gets packed into $OUT
# every 45 s, so a call cut short still returns its records. Memory: every process has its share of the
# card (XLA_PYTHON_CLIENT_MEM_FRACTION: GRID_SHARE / GRID_PARALLEL for the controlled runs, 0.8 / TB_PARALLEL
# for the translation runs), and the shares must add up to less than one. Keep to about 9 processes: with 13
# a run took 450 s (benchmarks/NOTES.md, 2026-12-07).
# CALL_SECONDS (default 450) bounds the training processes, for a session with less device time left:
#   run(command="CALL_SECONDS=300 bash benchmarks/experiments/recipe_gpu_call.sh", ...)
# The variables: GRID_VARIANTS (comma-separated; empty: none), GRID_SEEDS, GRID_SHARE, GRID_PARALLEL; TB_KINDS,
# TB_SIZES, TB_SEEDS (how many), TB_PARALLEL; TB_MODEL, the run whose model/ comes back in 15 MiB parts
# (`cat model.tar.part-* | tar x -C RUN`, then `collab-keras preset --run RUN`); TB_RETRAIN, committed runs to
# train again (below); TB_STEPS, TB_BATCH, TB_LR, TB_WARMUP, the schedule (defaults: the grid's 5,000 steps of 96
# pairs, 1e-3, 800 warm-up steps), and TB_RECORDS, the folder of committed runs of that schedule (runs of another
# schedule go to another folder, e.g. benchmarks/results/gpu-translation-converged). The next calls: NOTES.md.
S=${CALL_SECONDS:-450}
GRID_VARIANTS=${GRID_VARIANTS-}
GRID_SEEDS=${GRID_SEEDS:-0,1,2}
GRID_SHARE=${GRID_SHARE:-0.3}
GRID_PARALLEL=${GRID_PARALLEL:-3}
TB_KINDS=${TB_KINDS:-concatenate,collaborative}
TB_SIZES=${TB_SIZES:-64,32}
TB_PARALLEL=${TB_PARALLEL:-10}
TB_SEEDS=${TB_SEEDS:-3}
TB_MODEL=${TB_MODEL-}
TB_RETRAIN=${TB_RETRAIN-}
TB_STEPS=${TB_STEPS:-5000}
TB_BATCH=${TB_BATCH:-96}
TB_LR=${TB_LR:-1e-3}
TB_WARMUP=${TB_WARMUP:-800}
# The grid's finished records, committed after each call (`tar xzf records.tgz -C $RECORDS`), are read,
# not trained again. (The four of 2026-12-07-h100-recipe are not: their train_ce was the last batch's.)
RECORDS=benchmarks/results/gpu-recipe-grid
TB_RECORDS=${TB_RECORDS:-benchmarks/results/gpu-translation-grid}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
L=/tmp/logs; mkdir -p $L /tmp/rec /tmp/tb/runs
cp $RECORDS/*_seed*.json /tmp/rec/ 2>/dev/null; rm -f /tmp/rec/*.partial.json
# The translation runs of earlier calls (`tar xzf tb.tgz -C $TB_RECORDS`), read instead of trained again.
cp -r $TB_RECORDS/runs/* /tmp/tb/runs/ 2>/dev/null
# TB_RETRAIN (comma-separated run names): committed runs trained again all the same, e.g. to bring back the
# model of one (with TB_MODEL); unpack their new records beside the committed ones, not over them.
for run in ${TB_RETRAIN//,/ }; do rm -rf /tmp/tb/runs/$run /tmp/tb/runs/$run.log; done
# What came with the tree does not go back: tb.tgz holds the runs (and logs) this call trained, and the tables.
(cd /tmp/tb && ls -d runs/* 2>/dev/null) > /tmp/committed.txt
. benchmarks/experiments/xla_flags.sh $L/flags.txt
R=benchmarks/experiments/translation_recipe.py
T=benchmarks/experiments/translation_bible.py
(sleep $((S / 2)); nvidia-smi > $L/smi.txt) &
(while sleep 45; do
  tar czf $OUT/records.tgz.new -C /tmp/rec . && mv $OUT/records.tgz.new $OUT/records.tgz
  tar czf $OUT/logs.tgz.new -C $L . && mv $OUT/logs.tgz.new $OUT/logs.tgz
  tar czf $OUT/tb.tgz.new --exclude=checkpoints --exclude=model --exclude-from=/tmp/committed.txt -C /tmp/tb . && mv $OUT/tb.tgz.new $OUT/tb.tgz
done 2>/dev/null) &
PACK=$!
# Each translation run gets 0.8 / TB_PARALLEL of the card (8.4 GB on an H100 at 10).
(PYTHONPATH=/tmp/site:$PWD timeout $((S + 10)) python3 $T --data .data/nmt-bible-small --output-dir /tmp/tb --seeds $TB_SEEDS \
  --kinds $TB_KINDS --key-sizes $TB_SIZES --parallel $TB_PARALLEL --steps $TB_STEPS --checkpoint-every $((TB_STEPS / 5)) \
  --batch-size $TB_BATCH --learning-rate $TB_LR --warmup-steps $TB_WARMUP --label-smoothing 0.1 --mixed-precision \
  > $L/tb.txt 2>&1) &
TB=$!
# GRID_PARALLEL runs at a time, GRID_SHARE of the card among them; a run starts only while one round (about
# 250-400 s: compiling, 10 epochs, decoding) still fits.
[ -n "$GRID_VARIANTS" ] && timeout $S python3 $R run --data .data/translation_recipe --output /tmp/rec --seeds $GRID_SEEDS --epochs 10 \
  --variants $GRID_VARIANTS --parallel $GRID_PARALLEL --memory-share $GRID_SHARE --deadline $((S - 260)) > $L/grid.txt 2>&1
wait $TB; kill $PACK
# Patterns that cannot match this script's own command line, nor the runs of another task sharing the call.
pkill -f "translation_recipe[.]py one"; pkill -f "collab_keras[.]training train nmt"
sleep 3
tar czf $OUT/records.tgz -C /tmp/rec .
tar czf $OUT/tb.tgz --exclude=checkpoints --exclude=model --exclude-from=/tmp/committed.txt -C /tmp/tb .
M=/tmp/tb/runs/$TB_MODEL/model
[ -n "$TB_MODEL" ] && [ -f $M/config.json ] && tar cf - -C $(dirname $M) model | split -b 15m - $OUT/model.tar.part-
python3 $R table --output /tmp/rec > $L/table.txt 2>&1
tar czf $OUT/logs.tgz -C $L .
rm -f $OUT/*.new
tail -20 $L/table.txt; tail -12 $L/tb.txt; ls -la $OUT
