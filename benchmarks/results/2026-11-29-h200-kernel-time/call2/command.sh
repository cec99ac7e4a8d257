python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD:$PWD/tests:$PWD/benchmarks KERAS_BACKEND=torch
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/driver.txt
B=benchmarks/attention_kernel_torch.py
timeout 60 python3 $B --profile --lengths 512 --key-widths 256 --no-table > $OUT/profile.txt 2>&1
timeout 270 python3 $B --sweep --sweep-lengths 512,2048 --sweep-key-widths 256 --sweep-parts fwd,written --no-table > $OUT/sweep_256.txt 2>&1
timeout 200 python3 $B --sweep --sweep-lengths 512,2048 --sweep-key-widths 384 --sweep-parts fwd,written --no-table > $OUT/sweep_384.txt 2>&1
grep -E "^## |_kernel|nvjet|Memcpy|Self CUDA time total" $OUT/profile.txt | cut -c1-62,172-202 | head -14
grep -h -E "^## |ms, kernels|fails" $OUT/sweep_*.txt | cut -c1-120
