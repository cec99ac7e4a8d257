#!/bin/bash
# One 10-minute GPU call (JAX, no TensorFlow) for issues 25, 20 and 24, ready to run:
#   - issue 25: translation_recipe.py's grid, concat-128 / collab-128 / collab-128-scale x seeds 0,1,2
#     and collab-128-frozen, collab-128-normal and the no-bias pair seed 0, 10 epochs each, next to tests/gpu_training_shapes.py (item 1);
#   - issue 20: translation_bible.py, the zoo's transformer_small, concatenated at 256 and collaborative
#     at 64, one seed, 5,000 steps; the collaborative run's model/ comes back split into 15 MiB parts
#     (the candidate for the bible_en_de_collaborative preset: `collab-keras preset --run ...`);
#   - issue 24: benchmarks/embedding_gradient.py on JAX and torch.
# From the repository root, with the device tool:
#   run(command="bash benchmarks/experiments/recipe_gpu_call.sh", carry=[".whl", ".data/nmt-bible-small",
#       ".data/translation_recipe"], timeout_s=600)   (all of .data/ is over the 64 MiB a call carries)
# where .whl comes from ../shared/tools/device-wheels.sh, .data/translation_recipe from
# `translation_recipe.py prepare` and .data/nmt-bible-small from `collab-keras prepare nmt --preset
# transformer_small --sequence-length 128 --vocabulary-size 8000`. What there is gets packed into $OUT
# every 45 s, so a call cut short still returns its records (NOTES.md, 2026-12-06 and 2026-12-07).
# CALL_SECONDS (default 450) bounds the training processes, for a session with less device time left:
#   run(command="CALL_SECONDS=300 bash benchmarks/experiments/recipe_gpu_call.sh", ...)
S=${CALL_SECONDS:-450}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
L=/tmp/logs; mkdir -p $L /tmp/rec /tmp/tb
# Many small processes compiling at once: no GEMM autotuning under contention, and cuBLAS instead of
# Triton GEMM fusions (whose compiles took minutes on 2026-12-06). XLA aborts on a flag it does not
# know, so each set is probed and the first that runs is kept.
for flags in "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false" "--xla_gpu_autotune_level=0" ""; do
  export XLA_FLAGS="$flags"
  python3 -c "import jax; print(jax.devices(), jax.numpy.ones(3).sum())" >> $L/flags.txt 2>&1 && break
done
echo "XLA_FLAGS=$XLA_FLAGS" >> $L/flags.txt
R=benchmarks/experiments/translation_recipe.py
T=benchmarks/experiments/translation_bible.py
(XLA_PYTHON_CLIENT_MEM_FRACTION=0.05 timeout $((S - 70)) python3 tests/gpu_training_shapes.py > $L/gpu_check.txt 2>&1; echo "rc $?" >> $L/gpu_check.txt) &
(sleep $((S / 2)); nvidia-smi > $L/smi.txt) &
(while sleep 45; do
  tar czf $OUT/records.tgz.new -C /tmp/rec . && mv $OUT/records.tgz.new $OUT/records.tgz
  tar czf $OUT/logs.tgz.new -C $L . && mv $OUT/logs.tgz.new $OUT/logs.tgz
  tar czf $OUT/tb.tgz.new --exclude=checkpoints --exclude=model -C /tmp/tb . && mv $OUT/tb.tgz.new $OUT/tb.tgz
done 2>/dev/null) &
PACK=$!
(PYTHONPATH=/tmp/site:$PWD timeout $((S + 10)) python3 $T --data .data/nmt-bible-small --output-dir /tmp/tb --seeds 1 \
  --kinds collaborative --key-sizes 64 --parallel 2 --steps 5000 --checkpoint-every 5000 --batch-size 96 \
  --learning-rate 1e-3 --warmup-steps 800 --label-smoothing 0.1 --mixed-precision > $L/tb.txt 2>&1) &
TB=$!
(timeout $S python3 $R run --data .data/translation_recipe --output /tmp/rec --variants collab-128-frozen,collab-128-normal,concat-128-nobias,collab-128-frozen-nobias \
  --seeds 0 --parallel 12 --epochs 10 > $L/grid2.txt 2>&1) &
timeout $S python3 $R run --data .data/translation_recipe --output /tmp/rec \
  --variants concat-128,collab-128,collab-128-scale --seeds 0,1,2 --parallel 12 --epochs 10 > $L/grid.txt 2>&1
wait $TB; kill $PACK
# Patterns that cannot match this script's own command line.
pkill -f "translation_recipe[.]py one"; pkill -f "collab_keras[.]training train"
sleep 3
tar czf $OUT/records.tgz -C /tmp/rec .
tar czf $OUT/tb.tgz --exclude=checkpoints --exclude=model -C /tmp/tb .
M=/tmp/tb/runs/collaborative_64_seed0/model
[ -f $M/config.json ] && tar cf - -C $(dirname $M) model | split -b 15m - $OUT/model.tar.part-
python3 $R table --output /tmp/rec > $L/table.txt 2>&1
for b in jax torch; do
  KERAS_BACKEND=$b PYTHONPATH=/tmp/site:$PWD timeout 30 python3 benchmarks/embedding_gradient.py > $L/embedding_$b.txt 2>&1
done
tar czf $OUT/logs.tgz -C $L .
rm -f $OUT/*.new
tail -4 $L/gpu_check.txt; tail -20 $L/table.txt; tail -12 $L/tb.txt; tail -3 $L/embedding_*.txt; ls -la $OUT
