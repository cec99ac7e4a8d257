# Sourced by the GPU call scripts: `. benchmarks/experiments/xla_flags.sh LOG` exports XLA_FLAGS for many small
# processes sharing one card: no GEMM autotuning (it times candidates on a shared card) and no Triton GEMM fusions
# (whose compiles took minutes on 2026-12-06; benchmarks/NOTES.md). XLA aborts on a flag it does not know, so each
# set is probed and the first that runs is kept; the probes' output and the choice are appended to LOG.
for flags in "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false" "--xla_gpu_autotune_level=0" ""; do
  export XLA_FLAGS="$flags"
  python3 -c "import jax; print(jax.devices(), jax.numpy.ones(3).sum())" >> "$1" 2>&1 && break
done
echo "XLA_FLAGS=$XLA_FLAGS" >> "$1"
