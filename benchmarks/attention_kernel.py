"""The collaborative attention core on a GPU: Pallas kernel vs the rest (JAX).

Times, in one process on one card, forward and forward+backward of the
attention core alone (bf16, 12 heads, value width 64, content term on):

- `pallas`: `collab_keras.ops._pallas_attention.attention` (this repo's
  kernel: shared key read once per block, mixing and content inside) with
  its default backward (the score gradient written where it fits in
  `Config.score_gradient_bytes`, else flash);
- `pallas-flash`: the same kernel with the flash backward
  (`score_gradient_bytes=0`), side by side (forward+backward rows only: its
  forward is `pallas`'; it counts in the best-other column);
- `bcast`: the cuDNN JAX path, the key broadcast to every head, the content
  term as one more key column, the values zero-padded to the key width
  (`_jax_attention.attention`; only where cuDNN takes the width);
- `explicit`: the einsum path (XLA), the fallback for any width;
- `mha`: `jax.nn.dot_product_attention(implementation="cudnn")`, 12 heads
  of width 64 (what `keras.layers.MultiHeadAttention` runs with flash).

FLOP model (matrix products only): forward `2 B N T S (K + V)` for
collaborative and `2 B N T S (64 + 64)` for MHA, forward+backward 3.5x the
forward (the backward recomputes the scores: 5 products against the
forward's 2); TFLOP/s columns use it. Ratios are times against `mha`.

    python3 benchmarks/attention_kernel.py [--sweep] [--lengths 128,512]
        [--key-widths 128,256] [--sweep-kinds written] [--causal]

`--sweep` first times several tile configurations at Dk 256 and prints
them (to choose `_pallas_attention.default_config`): the forward's, the
flash backward's and the written backward's (`block_q_ds`, `block_k_ds`,
`warps_ds`, `stages_ds`; `--sweep-kinds` picks among `fwd,flash,written`,
and `--sweep-key-width` the width). `--profile` prints the GPU time of
each kernel of one forward+backward (a `jax.profiler` trace read back with
`jax.profiler.ProfileData`), for the Pallas core and cuDNN's MHA core. The
table ends with `_pallas_attention.PREFERRED_LENGTHS` as measured: per key
width, the first length where `pallas` forward+backward is no faster than
the best of `bcast` and `explicit` (lengths where neither was timed do not
count).
"""

import argparse
import collections
import glob
import tempfile
import time

import jax
import jax.numpy as jnp

from collab_keras.ops import _pallas_attention as pa
from _attention_core_table import BATCH_FOR
from _attention_core_table import HEADS
from _attention_core_table import VALUE
from _attention_core_table import print_header
from _attention_core_table import print_rows



def timed(fn, *args, repeats=10):
    """Median of `repeats` timings (ms) of 5 queued calls each."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / 5 * 1e3)
    times.sort()
    return times[len(times) // 2]


def make(batch, length, key_width, seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    bf = jnp.bfloat16
    q = jax.random.normal(ks[0], (batch, length, key_width), bf)
    k = jax.random.normal(ks[1], (batch, length, key_width), bf)
    v = jax.random.normal(ks[2], (batch, length, HEADS, VALUE), bf)
    m = jax.random.normal(ks[3], (HEADS, key_width), bf)
    c = jax.random.normal(ks[4], (batch, length, HEADS), bf)
    g = jax.random.normal(ks[5], (batch, length, HEADS, VALUE), bf)
    return q, k, v, m, c, g


def collab_fns(kind, key_width, causal, config=None):
    scale = key_width**-0.5
    if kind == "pallas-flash":
        kind = "pallas"
        config = (config or pa.default_config(key_width, VALUE))._replace(
            score_gradient_bytes=0)
    if kind == "pallas":
        def core(q, k, v, m, c):
            return pa.attention(q, k, v, m, c, scale=scale, is_causal=causal,
                                config=config)
    elif kind == "bcast":
        from collab_keras.ops import _jax_attention

        if not _jax_attention.cudnn_applies(key_width, VALUE, jnp.bfloat16,
                                            use_content=True):
            return None
        def core(q, k, v, m, c):
            return _jax_attention.attention(q, k, v, m, c, None, scale, causal)
    else:
        def core(q, k, v, m, c):
            mixed = jnp.einsum("btk,nk->btnk", q, m)
            s = jnp.einsum("btnk,bsk->bnts", mixed, k,
                           preferred_element_type=jnp.float32)
            s = (s + jnp.transpose(c, (0, 2, 1))[:, :, None, :]) * scale
            if causal:
                t = q.shape[1]
                s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
            p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
            return jnp.einsum("bnts,bsnv->btnv", p, v)
    fwd = jax.jit(core)

    def loss(q, k, v, m, c, g):
        return jnp.sum(core(q, k, v, m, c).astype(jnp.float32) * g)

    both = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return fwd, both


def mha_fns(causal):
    def core(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                            implementation="cudnn")

    def loss(q, k, v, g):
        return jnp.sum(core(q, k, v).astype(jnp.float32) * g)

    return jax.jit(core), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def sweep(lengths, key_width=256, kinds=("fwd", "flash", "written")):
    fwd_configs = [(64, 64, 4, 2), (128, 128, 8, 2), (128, 64, 8, 3),
                   (64, 64, 4, 3)]
    fwd_configs = fwd_configs if "fwd" in kinds else []
    bwd_configs = [(128, 64, 8, 0), (64, 32, 4, 0), (128, 32, 8, 0),
                   (64, 64, 4, 0), (128, 64, 8, HEADS)]
    bwd_configs = bwd_configs if "flash" in kinds else []
    ds_configs = [(64, 64, 4, 2), (32, 128, 8, 3), (64, 128, 8, 3),
                  (32, 64, 4, 3), (64, 64, 4, 3), (32, 128, 8, 2),
                  (64, 64, 8, 2)]
    ds_configs = ds_configs if "written" in kinds else []
    for length in lengths:
        batch = BATCH_FOR[length]
        q, k, v, m, c, g = make(batch, length, key_width)
        base = pa.default_config(key_width, VALUE)
        print(f"## sweep Dk {key_width}, B{batch} T{length}, default {base}")
        for bq, bk, w, st in fwd_configs:
            cfg = base._replace(block_q=bq, block_k=bk, warps=w, stages=st)
            try:
                fwd, _ = collab_fns("pallas", key_width, False, cfg)
                ms = timed(fwd, q, k, v, m, c)
                print(f"fwd bq{bq} bk{bk} w{w} s{st}: {ms:.3f} ms", flush=True)
            except Exception as e:  # noqa: BLE001 (report and go on)
                print(f"fwd bq{bq} bk{bk} w{w} s{st}: fails {str(e)[:200]}")
        for bq, bk, w, groups in bwd_configs:
            cfg = base._replace(block_q_bwd=bq, block_k_bwd=bk, warps_bwd=w,
                                head_groups=groups, score_gradient_bytes=0)
            try:
                _, both = collab_fns("pallas", key_width, False, cfg)
                ms = timed(both, q, k, v, m, c, g)
                print(f"fwd+bwd flash bwd bq{bq} bk{bk} w{w} groups{groups}: "
                      f"{ms:.3f} ms", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"fwd+bwd flash bwd bq{bq} bk{bk} w{w} groups{groups}: "
                      f"fails {str(e)[:200]}")
        for bq, bk, w, st in ds_configs:
            cfg = base._replace(block_q_ds=bq, block_k_ds=bk, warps_ds=w,
                                stages_ds=st)
            name = f"fwd+bwd written bwd bq{bq} bk{bk} w{w} s{st}"
            try:
                _, both = collab_fns("pallas", key_width, False, cfg)
                ms = timed(both, q, k, v, m, c, g)
                print(f"{name}: {ms:.3f} ms", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"{name}: fails {str(e)[:200]}")


def device_kernel_ms(fn, *args, calls=3):
    """GPU time per call of each kernel of `fn` (ms), longest first, from
    a `jax.profiler` trace read back with `jax.profiler.ProfileData`: the
    events of the device planes' stream lines (one per kernel launch)."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        jax.profiler.start_trace(log_dir)
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        path = glob.glob(f"{log_dir}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
    totals = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "Stream" not in line.name:  # not "XLA Modules" / "XLA Ops"
                continue
            for event in line.events:
                totals[event.name] += event.duration_ns / 1e6 / calls
    return totals.most_common()


def profile(lengths, key_widths, flash=False):
    """GPU time per kernel of one forward+backward of the Pallas core (the
    default backward, or the flash one) and of MHA's (cuDNN)."""
    for length in lengths:
        batch = BATCH_FOR[length]
        for key_width in key_widths:
            q, k, v, m, c, g = make(batch, length, key_width)
            kind = "pallas-flash" if flash else "pallas"
            _, both = collab_fns(kind, key_width, False)
            kernels = device_kernel_ms(both, q, k, v, m, c, g)
            print(f"## profile Dk {key_width}, B{batch} T{length}, {kind} "
                  f"fwd+bwd: {sum(t for _, t in kernels):.3f} ms of kernels")
            for name, ms in kernels[:14]:
                print(f"  {ms:8.3f} ms  {name[:100]}")
        if not flash:
            _, both = mha_fns(False)
            q, k, v = (jax.random.normal(jax.random.key(i), (batch, length,
                                         HEADS, 64), jnp.bfloat16)
                       for i in range(3))
            kernels = device_kernel_ms(both, q, k, v, q)
            print(f"## profile mha (cuDNN), B{batch} T{length} fwd+bwd: "
                  f"{sum(t for _, t in kernels):.3f} ms of kernels")
            for name, ms in kernels[:6]:
                print(f"  {ms:8.3f} ms  {name[:100]}")


def table(lengths, key_widths, causal):
    print(f"\n## attention core, bf16, N{HEADS} V{VALUE}, content on, "
          f"causal={causal}, card: {jax.devices()[0].device_kind}")
    others = ("pallas-flash", "bcast", "explicit")
    print_header("pallas", others)
    wins = {}  # key width -> [(length, pallas faster than bcast/explicit)]
    for length in lengths:
        batch = BATCH_FOR[length]
        _, _, mv, _, _, mg = make(batch, length, 64)
        mq = jax.random.normal(jax.random.key(7), (batch, length, HEADS, 64),
                               jnp.bfloat16)
        mhaf, mhab = mha_fns(causal)
        mha = (timed(mhaf, mq, mq, mv), timed(mhab, mq, mq, mv, mg))
        for key_width in key_widths:
            q, k, v, m, c, g = make(batch, length, key_width)
            res = {}
            for kind in ("pallas",) + others:
                if kind == "pallas-flash" and res["pallas"][0] is not None:
                    # Its forward is pallas': time the backward alone.
                    fns = collab_fns(kind, key_width, causal)
                    try:
                        res[kind] = (None, timed(fns[1], q, k, v, m, c, g))
                    except Exception as e:  # noqa: BLE001
                        print(f"{kind} T{length} Dk{key_width} fails: "
                              f"{str(e)[:300]}")
                        res[kind] = (None, None)
                    continue
                if kind == "explicit" and length * length * batch > 2**26:
                    res[kind] = (None, None)  # the scores would not fit
                    continue
                fns = collab_fns(kind, key_width, causal)
                if fns is None:
                    res[kind] = (None, None)
                    continue
                try:
                    res[kind] = (timed(fns[0], q, k, v, m, c),
                                 timed(fns[1], q, k, v, m, c, g))
                except Exception as e:  # noqa: BLE001
                    print(f"{kind} T{length} Dk{key_width} fails: {str(e)[:300]}")
                    res[kind] = (None, None)
            print_rows(length, batch, key_width, causal, res, mha,
                       "pallas", others)
            alternatives = [res[kind][1] for kind in ("bcast", "explicit")
                            if res[kind][1] is not None]
            # A length where no other path was timed decides nothing.
            if res["pallas"][1] is not None and alternatives:
                wins.setdefault(key_width, []).append(
                    (length, res["pallas"][1] < min(alternatives)))
    print_preferred_lengths(wins)


def print_preferred_lengths(wins):
    """`_pallas_attention.PREFERRED_LENGTHS` as measured: per key width,
    the first length where the kernel is no faster than the best other
    path (absent: not faster at the shortest length; `None`: faster at
    every length measured; give it a bound by hand)."""
    table = {}
    for key_width, rows in sorted(wins.items()):
        loses = [length for length, win in sorted(rows) if not win]
        if not loses:
            table[key_width] = None
        elif loses[0] > min(length for length, _ in rows):
            table[key_width] = loses[0]
    print(f"\nPREFERRED_LENGTHS as measured (attention core, fwd+bwd; "
          f"the rule now: {pa.PREFERRED_LENGTHS}): {table}")
    faster = {k: [length for length, win in sorted(r) if win]
              for k, r in sorted(wins.items())}
    print(f"pallas fastest at these lengths: {faster}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-lengths", default="512,2048")
    parser.add_argument("--sweep-key-width", type=int, default=256)
    parser.add_argument("--sweep-kinds", default="fwd,flash,written",
                        help="tile sweeps to run: fwd, flash, written")
    parser.add_argument("--lengths", default="128,512,2048,8192")
    parser.add_argument("--key-widths", default="128,192,256,384")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="GPU time per kernel at --lengths x --key-widths")
    parser.add_argument("--no-table", action="store_true")
    args = parser.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]
    if args.sweep:
        sweep(ints(args.sweep_lengths), args.sweep_key_width,
              args.sweep_kinds.split(","))
    if args.profile:
        profile(ints(args.lengths), ints(args.key_widths))
        profile(ints(args.lengths), ints(args.key_widths), flash=True)
    if not args.no_table:
        table(ints(args.lengths), ints(args.key_widths), args.causal)


if __name__ == "__main__":
    main()
