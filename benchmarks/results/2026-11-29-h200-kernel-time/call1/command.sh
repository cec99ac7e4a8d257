python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD:$PWD/tests:$PWD/benchmarks KERAS_BACKEND=torch
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/driver.txt
B=benchmarks/attention_kernel_torch.py
PYTHONPATH=$PWD/bench_old:$PYTHONPATH timeout 90 python3 $B --profile --lengths 512,2048 --key-widths 256 --no-table > $OUT/profile_old.txt 2>&1
timeout 90 python3 $B --profile --lengths 512,2048 --key-widths 256 --no-table > $OUT/profile_new.txt 2>&1
timeout 150 python3 $B --sweep --sweep-lengths 512 --sweep-key-widths 256 --sweep-parts written,query --no-table > $OUT/sweep_512_256.txt 2>&1
timeout 90 python3 $B --sweep --sweep-lengths 2048 --sweep-key-widths 256 --sweep-parts query --no-table > $OUT/sweep_2048_256.txt 2>&1
timeout 90 python3 $B --sweep --sweep-lengths 512 --sweep-key-widths 384 --sweep-parts query --no-table > $OUT/sweep_512_384.txt 2>&1
timeout 100 python3 tests/gpu_triton_attention.py 192 > $OUT/check.txt 2>&1; echo "rc=$?" >> $OUT/check.txt
for f in $OUT/profile_old.txt $OUT/profile_new.txt; do echo "== $f"; grep -E "^## |_kernel|nvjet|Self CUDA time total" $f | grep -v "default backward\b.*flash" | cut -c1-62,172-202 | head -32; done
grep -h -E "^## |ms, kernels|fails" $OUT/sweep_*.txt
tail -5 $OUT/check.txt
