"""The attention-core table shared by `attention_kernel.py` (JAX: Pallas)
and `attention_kernel_torch.py` (torch: Triton): sizes, FLOP model and rows.

FLOPs of the core: `2 B N T S (Dk + V)` forward (half with a causal mask),
forward+backward 3.5x that; MultiHeadAttention's core has `Dk = V = 64`.
"""

BATCH_FOR = {128: 64, 512: 32, 2048: 8, 4096: 4, 8192: 2}
HEADS, VALUE = 12, 64


def flops(batch, length, width, causal):
    """Forward FLOPs of the core at query/key width + value width `width`."""
    f = 2 * batch * HEADS * length * length * width
    return f / 2 if causal else f


def print_header(fused, others):
    """The table's header: the fused kernel's column, then `others`."""
    print(f"| T | B | Dk | mode | {fused} ms | "
          + " | ".join(f"{name} ms" for name in others)
          + f" | mha ms | {fused}/mha | best-other/mha | FLOP ratio | {fused} TFLOP/s |")
    print("|---" * (10 + len(others)) + "|")


def print_rows(length, batch, key_width, causal, results, mha, fused, others):
    """The fwd and fwd+bwd rows of one size: `results[kind]` and `mha` are
    `(fwd ms, fwd+bwd ms)` pairs (`None` where a kind did not run)."""
    cell = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    ratio = (key_width + VALUE) / 128
    for mode, idx, factor in (("fwd", 0, 1), ("fwd+bwd", 1, 3.5)):
        t = results[fused][idx]
        times = [results[kind][idx] for kind in others
                 if results[kind][idx] is not None]
        fl = factor * flops(batch, length, key_width + VALUE, causal)
        print(f"| {length} | {batch} | {key_width} | {mode} | {cell(t)} | "
              + " | ".join(cell(results[kind][idx]) for kind in others)
              + f" | {mha[idx]:.3f} | "
              + ("-" if t is None else f"{t / mha[idx]:.2f}")
              + " | " + (f"{min(times) / mha[idx]:.2f}" if times else "-")
              + f" | {ratio:.2f} | "
              + ("-" if t is None else f"{fl / t / 1e9:.0f}") + " |",
              flush=True)
