"""The explicit collaborative attention in torch: the reference that the
Triton kernel's checks compare with, on the GPU (`gpu_triton_attention.py`)
and in Triton's interpreter (`test_triton_attention.py`)."""

import torch


def explicit(query, key, value, mixing, content=None, mask=None, scale=1.0,
             is_causal=False, dtype=None):
    """The explicit path: einsums in `dtype` (float64 for the truth),
    softmax in float32 or float64, weights rounded to `dtype`."""
    dtype = dtype or query.dtype
    soft = torch.float64 if dtype == torch.float64 else torch.float32
    q, k, v, m = (x.to(dtype) for x in (query, key, value, mixing))
    mixed = torch.einsum("btk,nk->bntk", q, m)
    scores = torch.einsum("bntk,bsk->bnts", mixed, k).to(soft)
    if content is not None:
        scores = scores + content.to(soft).permute(0, 2, 1)[:, :, None, :]
    scores = scores * scale
    t, s = q.shape[1], k.shape[1]
    valid = torch.ones(1, 1, t, s, dtype=torch.bool, device=q.device)
    if is_causal:
        valid = valid & valid.tril()
    if mask is not None:
        valid = valid & mask
    scores = scores.masked_fill(~valid, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    top = torch.where(top == float("-inf"), 0.0, top).detach()
    weights = torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    weights = (weights / torch.where(total > 0, total, 1.0)).to(dtype)
    return torch.einsum("bnts,bsnv->btnv", weights, v)


def output_and_grads(fn, args, grad, **kwargs):
    """`fn(*args, **kwargs)` and the gradients of every given (not None)
    input, for the upstream gradient `grad`."""
    args = [None if a is None else a.detach().requires_grad_() for a in args]
    out = fn(*args, **kwargs)
    given = [a for a in args if a is not None]
    grads = torch.autograd.grad((out.double() * grad.double()).sum(), given)
    return [out] + list(grads)
