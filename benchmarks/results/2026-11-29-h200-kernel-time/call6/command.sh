python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD:$PWD/tests:$PWD/benchmarks KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/driver.txt
timeout 100 python3 benchmarks/attention_kernel.py --profile --lengths 512,2048 --key-widths 256 --no-table > $OUT/profile_new.txt 2>&1
PYTHONPATH=$PWD/bench_old:$PYTHONPATH timeout 90 python3 benchmarks/attention_kernel.py --profile --lengths 512,2048 --key-widths 256 --no-table > $OUT/profile_old.txt 2>&1
timeout 160 python3 benchmarks/gpu_attention.py --out $OUT/jax --budget-s 150 --parts jax --shared-key-dims 256 --lengths 512,2048 --variants auto --modes fwd+bwd --repeats 5 --check-sizes "2,256,768,12,256" --layer-timeout 150 > $OUT/jax.txt 2>&1
timeout 100 python3 tests/gpu_pallas_attention.py --backwards written > $OUT/check.txt 2>&1; echo "rc=$?" >> $OUT/check.txt
for f in new old; do echo "== $f"; grep -A9 "pallas fwd+bwd" $OUT/profile_$f.txt | cut -c1-70; done
grep -E "check|fwd\+bwd" $OUT/jax.txt | cut -c1-170
grep -E "^\|" $OUT/check.txt | cut -c1-120 | tail -8; tail -2 $OUT/check.txt
