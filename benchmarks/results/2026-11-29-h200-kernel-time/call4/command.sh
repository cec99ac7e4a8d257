python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD:$PWD/tests:$PWD/benchmarks KERAS_BACKEND=torch
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/driver.txt
B=benchmarks/attention_kernel_torch.py
timeout 150 python3 $B --sweep --sweep-lengths 512,2048 --sweep-key-widths 256 --sweep-parts mixing --no-table > $OUT/sweep_256.txt 2>&1
timeout 80 python3 $B --sweep --sweep-lengths 512 --sweep-key-widths 384 --sweep-parts mixing --no-table > $OUT/sweep_384.txt 2>&1
grep -h -E "^## |ms, kernels|fails" $OUT/sweep_*.txt | cut -c1-100
