python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site:$PWD:$PWD/tests:$PWD/benchmarks KERAS_BACKEND=torch
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > $OUT/driver.txt
timeout 60 python3 benchmarks/attention_kernel_torch.py --profile --lengths 512,2048 --key-widths 256 --no-table > $OUT/profile_torch.txt 2>&1
timeout 330 python3 benchmarks/gpu_attention.py --out $OUT/grid --budget-s 320 --parts torch,bert --shared-key-dims 128,192,256,384 --lengths 128,512,2048,8192 --variants auto --modes fwd,fwd+bwd --repeats 5 --check-sizes "2,256,768,12,256" --layer-timeout 215 --bert-key-dims 256,384 --bert-repeats 5 --bert-timeout 100 > $OUT/grid.txt 2>&1
timeout 170 python3 tests/gpu_triton_attention.py 192 > $OUT/check.txt 2>&1; echo "rc=$?" >> $OUT/check.txt
grep -E "^## |_kernel|nvjet|Self CUDA time total" $OUT/profile_torch.txt | grep -B1 -A9 "default backward" | cut -c1-62,172-202 | head -24
grep -E "fwd\+bwd|concatenated|collaborative" $OUT/grid.txt | cut -c1-160 | head -24
grep -c "| yes |" $OUT/check.txt; grep -E "\| no \||rc=|Error" $OUT/check.txt | head
