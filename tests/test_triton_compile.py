"""The torch Triton kernels compiled for an H100 / H200 (sm_90) on the CPU.

Triton compiles ahead of time without a GPU (`ptxas` ships in its wheel).
Every kernel that a forward and a backward launch, with the default tiles
(`_triton_attention.default_config`), is compiled at every shared key width
from 64 to 512 in steps of 64, both backwards, every mask kind, causal,
float32 and wider values; each must compile (Triton's rules on tile shapes,
`ptxas`) and fit a block's shared memory by the compiler's own count, not
only by `fit_tiles`' model of it. The launches come from the kernel module's
own `_forward` and `_backward` run on CPU tensors with the kernels replaced
by recorders, so the arguments are the ones a GPU run passes.
"""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from collab_keras.ops._attention_utils import SHARED_MEMORY_BYTES  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
POINTERS = {torch.bfloat16: "*bf16", torch.float16: "*fp16",
            torch.float32: "*fp32", torch.uint8: "*u8"}


@pytest.fixture(scope="module")
def ta(tmp_path_factory):
    """`_triton_attention` with compiled (not interpreted) kernels, loaded
    as a module of its own so that the interpreter's copy is untouched;
    Triton's cache in a temporary folder."""
    saved = {name: os.environ.pop(name, None)
             for name in ("TRITON_INTERPRET", "TRITON_CACHE_DIR")}
    os.environ["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton"))
    try:
        path = importlib.util.find_spec(
            "collab_keras.ops._triton_attention").origin
        spec = importlib.util.spec_from_file_location(
            "_triton_attention_compiled", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


class _Recorder:
    """Stands in for a Triton kernel: records the launches' arguments."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(
            (self.kernel, args, kwargs))


def _launches(ta, monkeypatch, key_width, dtype, mask, causal, value_width,
              flash):
    """The kernel launches of one forward and backward on CPU tensors."""
    launches = []
    for name in dir(ta):
        kernel = getattr(ta, name)
        if isinstance(kernel, triton.runtime.jit.JITFunction) and (
                name.endswith("_kernel")):
            monkeypatch.setattr(ta, name, _Recorder(kernel, launches))
    batch, length, heads = 2, 512, 12
    rand = lambda *shape: torch.randn(*shape, dtype=dtype)
    q, k = rand(batch, length, key_width), rand(batch, length, key_width)
    v, m = rand(batch, length, heads, value_width), rand(heads, key_width)
    c = rand(batch, length, heads)
    mask = {
        None: None,
        "keys": torch.ones(batch, 1, 1, length, dtype=torch.bool),
        "full": torch.ones(batch, heads, length, length, dtype=torch.bool),
    }[mask]
    config = ta.default_config(key_width, dtype, value_width,
                               full_mask=mask is not None and mask.shape[2] > 1)
    # The default backward at keys up to 128 is the flash one: both here.
    config = config._replace(score_gradient_bytes=0 if flash else 1 << 30)
    static = ta._Static(0.1, causal, config)
    out, lse = ta._forward(q, k, v, m, c, mask, static)
    ta._backward(q, k, v, m, c, mask, out, lse, torch.randn_like(out), static)
    return launches


def _compile(kernel, args, kwargs):
    """`kernel` compiled for sm_90 with the launch's arguments."""
    kwargs = dict(kwargs)
    options = {name: kwargs.pop(name) for name in ("num_warps", "num_stages")
               if name in kwargs}
    signature = {}
    for name, value in zip(kernel.arg_names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = POINTERS[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    constants = {}
    for name, value in kwargs.items():
        signature[name] = "constexpr"
        constants[(kernel.arg_names.index(name),)] = value
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=HOPPER, options=options)


CASES = [
    # key width, dtype, mask, causal, value width
    *[(width, torch.bfloat16, None, False, 64)
      for width in range(64, 513, 64)],
    (256, torch.bfloat16, "keys", True, 64),
    (384, torch.bfloat16, "full", True, 64),
    (192, torch.bfloat16, "full", False, 80),  # refused on the H200 once
    (256, torch.float32, "keys", False, 64),
    (384, torch.float16, None, True, 128),
]


@pytest.mark.parametrize("flash", [False, True], ids=["written", "flash"])
@pytest.mark.parametrize(
    "key_width,dtype,mask,causal,value_width", CASES,
    ids=[f"k{w}-{str(d)[6:]}-mask_{m}{'-causal' if c else ''}-v{v}"
         for w, d, m, c, v in CASES])
def test_kernels_compile_for_hopper_and_fit_shared_memory(
        ta, monkeypatch, key_width, dtype, mask, causal, value_width, flash):
    launches = _launches(ta, monkeypatch, key_width, dtype, mask, causal,
                         value_width, flash)
    names = {kernel.__name__ for kernel, _, _ in launches}
    backward = {"_query_kernel"} if flash else {"_mixing_gradient_kernel"}
    assert {"_forward_kernel", "_key_kernel"} | backward <= names
    for kernel, args, kwargs in launches:
        shared = _compile(kernel, args, kwargs).metadata.shared
        assert shared <= SHARED_MEMORY_BYTES, (kernel.__name__, shared,
                                               kwargs)
