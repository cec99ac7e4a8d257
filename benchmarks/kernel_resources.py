"""The GPU kernels' resources, compiled for an H100 / H200 on the CPU.

Triton compiles ahead of time without a GPU (`ptxas` ships in its wheel).
For each shared key width and both backwards, with the default tiles, this
compiles for sm_90 every kernel that a forward and a backward launch:

- Pallas (JAX): the kernels lowered for CUDA by JAX, their Triton IR then
  compiled by the Triton package (on the GPU XLA compiles it with its own
  copy of Triton, so the counts there may differ slightly);
- Triton (torch): the launches of `_triton_attention`'s own `_forward` and
  `_backward`, run on CPU tensors with the kernels replaced by recorders, so
  the arguments are those of a GPU run.

and prints, per kernel, its warps and stages, the shared memory it takes
(against a block's 227 KiB), the registers per thread and the bytes spilled
to local memory (`ptxas -v`): what a timing cannot show by itself, e.g. why
a backward is slow at some width. `--check` exits 1 if a kernel takes more
shared memory than a block has. `tests/test_pallas_attention.py` and
`tests/test_triton_compile.py` run it (in processes of their own: whether
Triton's kernels are interpreted is fixed when Triton is first imported).

    python3 benchmarks/kernel_resources.py [--kernels pallas,triton]
        [--key-widths 64,128,...,512] [--backwards written,flash]
        [--mask none|keys|full] [--dtype bfloat16] [--causal]
        [--value-width 64] [--tiles warps_bwd=8] [--json FILE] [--check]

Batch 2, length 512, 12 heads (Pallas: 4 heads, length 256), the content
term on; by default values 64 wide, bfloat16, a key padding mask (the
Pallas rows are always bfloat16, non-causal, values 64 wide).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# The two backwards: the score gradient written (the default where it fits)
# and the flash one.
BACKWARDS = {"written": {"score_gradient_bytes": 1 << 30},
             "flash": {"score_gradient_bytes": 0}}
KEY_WIDTHS = (64, 128, 192, 256, 320, 384, 448, 512)


def hopper():
    """The compile target: sm_90, the H100 and H200."""
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


# ---------------------------------------------------------------------------
# Pallas.


def pallas_kernels(key_width, backward, mask="keys", tiles=None):
    """The Pallas kernels of a forward and backward lowered for CUDA (no GPU
    needed: Pallas lowers to Triton in Python, and raises there for tile
    shapes Triton does not take, e.g. sizes not a power of two), as
    `[(name, triton_ir_text, stages, warps)]`.

    `backward`: a key of `BACKWARDS`; `mask`: "none", "keys" (B, 1, 1, S)
    or "full" (B, 1, T, S); `tiles`: `Config` fields to replace in the
    default tiles.
    """
    import jax
    import jax.numpy as jnp
    from jax._src.pallas.triton import lowering

    from collab_keras.ops import _pallas_attention as pa

    batch, length, heads = 2, 256, 4
    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    mask = {
        "none": None,
        "keys": jax.ShapeDtypeStruct((batch, 1, 1, length), jnp.bool_),
        "full": jax.ShapeDtypeStruct((batch, 1, length, length), jnp.bool_),
    }[mask]
    config = pa.default_config(
        key_width, 64, jnp.bfloat16,
        full_mask=mask is not None and mask.shape[2] > 1,
    )._replace(**BACKWARDS[backward], **(tiles or {}))

    def loss(q, k, v, m, c, mask):
        out = pa.attention(q, k, v, m, c, mask, scale=0.1, config=config)
        return jnp.sum(out.astype(jnp.float32))

    modules = []
    lower = lowering.lower_jaxpr_to_triton_module

    def recording_lower(*args, **kwargs):
        result = lower(*args, **kwargs)
        modules.append(result.module.operation.get_asm())
        return result

    lowering.lower_jaxpr_to_triton_module = recording_lower
    try:
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
        text = grad.trace(
            bf16(batch, length, key_width), bf16(batch, length, key_width),
            bf16(batch, length, heads, 64), bf16(heads, key_width),
            bf16(batch, length, heads), mask,
        ).lower(lowering_platforms=("cuda",)).as_text()
    finally:
        lowering.lower_jaxpr_to_triton_module = lower
    # The custom calls' settings, in the order the kernels were lowered.
    settings = re.findall(r'name = "(collaborative_\w+)", num_stages = (\d+) '
                          r': i32, num_warps = (\d+) : i32', text)
    if len(settings) != len(modules):
        raise RuntimeError(
            f"{len(modules)} kernels lowered, {len(settings)} custom calls "
            "found: this JAX writes its Triton calls differently.")
    return [(name, module, int(stages), int(warps))
            for (name, stages, warps), module in zip(settings, modules)]


def compile_pallas(ir, stages, warps):
    """A Pallas kernel's Triton IR (text) compiled for sm_90."""
    import triton

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "kernel.ttir"
        path.write_text(ir)
        return triton.compile(str(path), target=hopper(),
                              options={"num_warps": warps,
                                       "num_stages": stages})


# ---------------------------------------------------------------------------
# Triton (torch).


def triton_module():
    """`_triton_attention` with compiled (not interpreted) kernels, loaded
    as a module of its own (so that a copy loaded for Triton's interpreter
    is left alone)."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        path = importlib.util.find_spec(
            "collab_keras.ops._triton_attention").origin
        spec = importlib.util.spec_from_file_location(
            "_triton_attention_compiled", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


class _Recorder:
    """Stands in for a Triton kernel: records the launches' arguments."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(
            (self.kernel, args, kwargs))


@contextlib.contextmanager
def _recording(ta):
    """`ta`'s kernels replaced by recorders; yields the launches."""
    import triton

    launches, saved = [], {}
    for name in dir(ta):
        kernel = getattr(ta, name)
        if isinstance(kernel, triton.runtime.jit.JITFunction) and (
                name.endswith("_kernel")):
            saved[name] = kernel
            setattr(ta, name, _Recorder(kernel, launches))
    try:
        yield launches
    finally:
        for name, kernel in saved.items():
            setattr(ta, name, kernel)


def triton_launches(ta, key_width, backward, dtype="bfloat16", mask="keys",
                    causal=False, value_width=64, tiles=None):
    """The kernel launches of one forward and backward of `ta` (from
    `triton_module`) on CPU tensors, as `[(kernel, args, kwargs)]`.

    `backward`: a key of `BACKWARDS`; `mask`: "none", "keys" (B, 1, 1, S)
    or "full" (B, N, T, S); `tiles`: `Config` fields to replace in the
    default tiles.
    """
    import torch

    dtype = getattr(torch, dtype)
    batch, length, heads = 2, 512, 12
    rand = lambda *shape: torch.randn(*shape, dtype=dtype)
    q, k = rand(batch, length, key_width), rand(batch, length, key_width)
    v, m = rand(batch, length, heads, value_width), rand(heads, key_width)
    c = rand(batch, length, heads)
    mask = {
        "none": None,
        "keys": torch.ones(batch, 1, 1, length, dtype=torch.bool),
        "full": torch.ones(batch, heads, length, length, dtype=torch.bool),
    }[mask]
    config = ta.default_config(key_width, dtype, value_width,
                               full_mask=mask is not None
                               and mask.shape[2] > 1)
    config = config._replace(**BACKWARDS[backward], **(tiles or {}))
    static = ta._Static(0.1, causal, config)
    with _recording(ta) as launches:
        out, lse = ta._forward(q, k, v, m, c, mask, static)
        ta._backward(q, k, v, m, c, mask, out, lse, torch.randn_like(out),
                     static)
    return launches


def compile_triton(kernel, args, kwargs):
    """A Triton kernel compiled for sm_90 with a launch's arguments, by
    Triton's own binder: the argument specialization of a GPU launch
    (integers equal to 1 or divisible by 16, aligned pointers)."""
    import triton
    from triton.compiler import ASTSource
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(hopper())
    binder = create_function_from_signature(kernel.signature, kernel.params,
                                            backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constants, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options)
    source = ASTSource(kernel, signature, constants, attrs)
    return triton.compile(source, target=hopper(), options=options.__dict__)


# ---------------------------------------------------------------------------
# Resources.


def resources(compiled):
    """Shared memory (bytes), registers per thread and spilled bytes of a
    compiled kernel (`ptxas -v` on its PTX, the `ptxas` in Triton's wheel)."""
    import triton

    ptxas = (pathlib.Path(triton.__file__).parent
             / "backends" / "nvidia" / "bin" / "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "kernel.ptx"
        path.write_text(compiled.asm["ptx"])
        report = subprocess.run(
            [str(ptxas), "-v", "--gpu-name", "sm_90a", str(path), "-o",
             os.devnull], capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                       report)
    return {
        "shared_bytes": compiled.metadata.shared,
        "registers": int(registers.group(1)) if registers else None,
        "spill_stores": int(spills.group(1)) if spills else None,
        "spill_loads": int(spills.group(2)) if spills else None,
    }


def rows(kernels, key_widths, backwards=tuple(BACKWARDS), tiles=None,
         mask="keys", dtype="bfloat16", causal=False, value_width=64):
    """One row per compiled kernel: which, where, and its resources
    (`tiles`: `Config` fields replaced in both kernels' default tiles;
    `dtype`, `causal`, `value_width`: the Triton kernel's launches)."""
    ta = triton_module() if "triton" in kernels else None
    for key_width in key_widths:
        for backward in backwards:
            compiled = []
            if "pallas" in kernels:
                for name, ir, stages, warps in pallas_kernels(
                        key_width, backward, mask, tiles=tiles):
                    compiled.append((
                        "pallas", name.replace("collaborative_attention_", ""),
                        warps, stages, compile_pallas(ir, stages, warps)))
            if "triton" in kernels:
                seen = set()
                for kernel, args, kwargs in triton_launches(
                        ta, key_width, backward, dtype, mask, causal,
                        value_width, tiles=tiles):
                    key = (kernel.__name__, repr(sorted(kwargs.items())))
                    if key in seen:  # the same kernel, another chunk
                        continue
                    seen.add(key)
                    compiled.append((
                        "triton", kernel.__name__.strip("_"),
                        kwargs.get("num_warps", 4), kwargs.get("num_stages", 3),
                        compile_triton(kernel, args, kwargs)))
            for kind, name, warps, stages, binary in compiled:
                yield {"kernels": kind, "key_width": key_width,
                       "backward": backward, "mask": mask, "dtype": dtype,
                       "causal": causal, "value_width": value_width,
                       "kernel": name, "warps": warps, "stages": stages,
                       **resources(binary)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="pallas,triton")
    parser.add_argument("--key-widths",
                        default=",".join(map(str, KEY_WIDTHS)))
    parser.add_argument("--backwards", default="written,flash")
    parser.add_argument("--tiles", default="",
                        help="Config fields replaced in the default tiles, "
                             "e.g. warps_bwd=8,block_k_bwd=64")
    parser.add_argument("--mask", default="keys",
                        choices=("none", "keys", "full"))
    parser.add_argument("--dtype", default="bfloat16",
                        choices=("bfloat16", "float16", "float32"),
                        help="of the Triton kernel's inputs")
    parser.add_argument("--causal", action="store_true",
                        help="the Triton kernel's causal mode")
    parser.add_argument("--value-width", type=int, default=64,
                        help="of the Triton kernel's values")
    parser.add_argument("--json", default=None, help="the rows, one per line")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a kernel takes more shared memory "
                             "than a block has")
    args = parser.parse_args()
    kernels = args.kernels.split(",")
    for kind in kernels:
        if kind not in ("pallas", "triton"):
            parser.error(f"--kernels takes pallas and triton. Received: {kind}")
    key_widths = [int(width) for width in args.key_widths.split(",")]
    backwards = args.backwards.split(",")
    for backward in backwards:
        if backward not in BACKWARDS:
            parser.error("--backwards takes written and flash. "
                         f"Received: {backward}")
    tiles = {}
    for item in filter(None, args.tiles.split(",")):
        name, _, value = item.partition("=")
        if not value.isdigit():
            parser.error("--tiles takes name=integer items. "
                         f"Received: {item}")
        tiles[name] = int(value)
    import triton

    from collab_keras.ops._attention_utils import SHARED_MEMORY_BYTES

    print(f"# sm_90, Triton {triton.__version__}, content term, mask "
          f"{args.mask}; Triton kernel: {args.dtype}, values "
          f"{args.value_width}{', causal' if args.causal else ''}; default "
          "tiles" + (f" with {args.tiles}" if tiles else ""))
    print("| kernels | Dk | backward | kernel | warps | stages | shared KiB "
          "| registers | spilled bytes (stores/loads) |")
    print("|---|---|---|---|---|---|---|---|---|")
    log = open(args.json, "w") if args.json else None
    too_large = []
    for row in rows(kernels, key_widths, backwards, tiles, args.mask,
                    args.dtype, args.causal, args.value_width):
        if row["shared_bytes"] > SHARED_MEMORY_BYTES:
            too_large.append(row)
        print(f"| {row['kernels']} | {row['key_width']} | {row['backward']} "
              f"| {row['kernel']} | {row['warps']} | {row['stages']} "
              f"| {row['shared_bytes'] / 1024:.1f} | {row['registers']} "
              f"| {row['spill_stores']} / {row['spill_loads']} |", flush=True)
        if log:
            log.write(json.dumps(row) + "\n")
    if log:
        log.close()
    for row in too_large:
        print(f"{row['kernels']} {row['kernel']} at key width "
              f"{row['key_width']} ({row['backward']} backward) takes "
              f"{row['shared_bytes']} bytes of shared memory, more than a "
              f"block's {SHARED_MEMORY_BYTES}", file=sys.stderr)
    if args.check and too_large:
        sys.exit(1)


if __name__ == "__main__":
    main()
