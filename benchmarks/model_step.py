"""Whole-model training steps of the zoo next to Keras and keras-hub baselines.

One jitted training step (forward, backward, AdamW; dropout 0) per row, JAX
backend, mixed_bfloat16, all rows in one process (issue 24, items 3 to 5):

- `plain`, `plain_mask`: a plain stack of post-norm Keras encoder layers
  (`MultiHeadAttention`, `LayerNormalization`, `Dense` feed-forward) at the
  BERT widths, without a mask and with an all-true `(B, T, T)` mask: the
  baseline (`plain_mask`) that every row's time is divided by;
- `hub_encoder`, `hub_encoder_padding`: `keras_hub.layers.TransformerEncoder`
  layers, without and with an all-ones `padding_mask`;
- `hub_bert`: `keras_hub.models.BertBackbone`;
- `bert_concatenated_lookup`: the zoo's `BertBackbone`, concatenated, with
  its segment embedding a plain `keras.layers.Embedding` (the state before
  `OneHotEmbedding`, to show its effect);
- `bert_concatenated`, `bert_collaborative_{192,256,384}`: the zoo's
  `BertBackbone`;
- `vit_concatenated`, `vit_collaborative_256`: the zoo's ViT-B/16, 224x224
  images;
- `nmt_concatenated`, `nmt_collaborative_256`: the zoo's Transformer-NMT
  base, source and target of the sequence length.

Sizes: bert_base widths (12 layers, 12 heads, 768, 3072), batch 32, length
512; `--quick` takes the tiny architectures at batch 2, length 16 (and the
shared key widths scaled by `hidden_dim / 768`), for CPUs. Inputs: random
token ids, segment ids 0, padding masks all ones. Loss: the mean square of
every output (float32), so the whole backbone is trained and no head adds
FLOPs.

Columns: median ms/step of `--repeats` steps (each waited for with
`jax.block_until_ready`) after a compiling call and `--warmup` steps;
tokens/s (every position the model processes, source and target for the
NMT); the ratio to `plain_mask`; MFU, `collab_keras.training.flops.transformer_training_flops / step time / peak`
(peak `--peak-tflops`, default 790: the H100's measured bf16 matmul rate;
none on CPUs);
and the attention paths seen while tracing (`attention_paths`): calls of
`jax.nn.dot_product_attention` by implementation (`cudnn`, `xla`, and
`cudnn failed: ...` where keras' MultiHeadAttention caught cuDNN's refusal
and fell back, e.g. "Bias must have same seq length as QKV"; `cudnn
refused: ...` where keras' check kept cuDNN out, e.g. float32 inputs), the Pallas
kernel, and the explicit einsum paths of `MultiHeadAttention` and
`CollaborativeAttention`.

    KERAS_BACKEND=jax python3 benchmarks/model_step.py --out $OUT/model_step.json
    KERAS_BACKEND=jax python3 benchmarks/model_step.py --quick --rows plain,bert_concatenated

`--collaborative-core pallas` runs every fused collaborative call on the
Pallas kernel (`_pallas_attention.preferred` answers yes wherever the kernel
applies) instead of the automatic choice, which gives cuDNN the widths it
takes: the whole-model side of the dispatch table (`PREFERRED_LENGTHS`).

The JSON record (`--out`, written after every row) also holds each row's
first and last loss and its layers' dtype policies (`dtype_policies`: every
row runs under mixed_bfloat16, set again for each row since
`keras.backend.clear_session()` puts the global policy back to float32).

Needs no TensorFlow (the GPU machine has none).
"""

import argparse
import collections
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = (
    "plain",
    "plain_mask",
    "hub_encoder",
    "hub_encoder_padding",
    "hub_bert",
    "bert_concatenated_lookup",
    "bert_concatenated",
    "bert_collaborative_192",
    "bert_collaborative_256",
    "bert_collaborative_384",
    "vit_concatenated",
    "vit_collaborative_256",
    "nmt_concatenated",
    "nmt_collaborative_256",
)
BASELINE = "plain_mask"


@contextlib.contextmanager
def recording_attention_paths(paths):
    """Counts, into the `collections.Counter` `paths`, the attention paths
    traced inside the block: `jax.nn.dot_product_attention` calls by
    implementation (and the failures keras' `MultiHeadAttention` catches
    before it falls back), why keras did not try cuDNN (on GPUs), the
    Pallas kernel, and the explicit paths of `MultiHeadAttention` and
    `CollaborativeAttention`."""
    import jax
    import keras
    from keras.src.backend.jax import nn as jax_nn

    from collab_keras.layers import CollaborativeAttention
    from collab_keras.ops import _pallas_attention

    dot_product_attention = jax.nn.dot_product_attention
    pallas = _pallas_attention.attention
    compute_attention = keras.layers.MultiHeadAttention._compute_attention
    use_fused_path = CollaborativeAttention._use_fused_path
    can_use_flash = jax_nn._can_use_flash_attention

    def recording_dot_product_attention(*args, implementation=None, **kwargs):
        name = implementation or "xla"
        try:
            output = dot_product_attention(
                *args, implementation=implementation, **kwargs
            )
        except Exception as error:
            paths[f"{name} failed: {str(error).splitlines()[0][:120]}"] += 1
            raise
        paths[name] += 1
        return output

    def recording_can_use_flash(*args, **kwargs):
        # keras' check whether cuDNN takes the inputs; where it does not
        # (on a GPU), why: e.g. float32 inputs.
        usable = can_use_flash(*args, **kwargs)
        if not usable and jax.devices()[0].platform == "gpu":
            try:
                can_use_flash(*args, **{**kwargs, "raise_error": True})
            except Exception as error:
                reason = str(error).splitlines()[0][:120] if str(error) else ""
                paths[f"cudnn refused: {type(error).__name__} {reason}"] += 1
        return usable

    def recording_pallas(*args, **kwargs):
        paths["pallas"] += 1
        return pallas(*args, **kwargs)

    def recording_compute_attention(self, query, *args, **kwargs):
        explicit = (
            kwargs.get("return_attention_scores")
            or self._dropout > 0
            or len(query.shape) != 4
        )
        if explicit:  # e.g. ConcatenatedAttention at a reduced key width
            paths["multi-head explicit"] += 1
        return compute_attention(self, query, *args, **kwargs)

    def recording_use_fused_path(self, *args, **kwargs):
        fused = use_fused_path(self, *args, **kwargs)
        if not fused:
            paths["collaborative explicit"] += 1
        return fused

    jax.nn.dot_product_attention = recording_dot_product_attention
    _pallas_attention.attention = recording_pallas
    keras.layers.MultiHeadAttention._compute_attention = (
        recording_compute_attention
    )
    CollaborativeAttention._use_fused_path = recording_use_fused_path
    jax_nn._can_use_flash_attention = recording_can_use_flash
    try:
        yield paths
    finally:
        jax.nn.dot_product_attention = dot_product_attention
        _pallas_attention.attention = pallas
        keras.layers.MultiHeadAttention._compute_attention = compute_attention
        CollaborativeAttention._use_fused_path = use_fused_path
        jax_nn._can_use_flash_attention = can_use_flash


@contextlib.contextmanager
def collaborative_core(core):
    """The attention core of collaborative layers inside the block: `auto`
    (the dispatch as shipped) or `pallas` (the Pallas kernel wherever it
    applies, cuDNN never)."""
    from collab_keras.ops import _jax_attention
    from collab_keras.ops import _pallas_attention

    if core == "auto":
        yield
        return
    preferred = _pallas_attention.preferred
    half = ("bfloat16", "float16")

    def always(length, key_width, dtype):
        return _jax_attention.on_gpu() and str(dtype) in half

    _pallas_attention.preferred = always
    try:
        yield
    finally:
        _pallas_attention.preferred = preferred


def sizes(quick):
    """The architectures, batch and length of a run (`--quick`: tiny)."""
    if quick:
        return dict(bert="bert_tiny", vit="vit_tiny", nmt="transformer_tiny",
                    batch=2, length=16)
    return dict(bert="bert_base_uncased", vit="vit_b16",
                nmt="transformer_base", batch=32, length=512)


def _token_inputs(rng, batch, length, vocabulary_size):
    """Random token ids (no padding id), segment ids 0, all-ones padding."""
    token_ids = rng.integers(1, vocabulary_size, (batch, length)).astype("int32")
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.ones_like(token_ids),
    }


def build_row(name, size, rng):
    """The model, its inputs, its training FLOPs and tokens of row `name`.

    Returns:
        `(model, inputs, flops, tokens)`.
    """
    import keras
    import keras_hub

    from collab_keras.models import BertBackbone
    from collab_keras.models import TransformerNMTBackbone
    from collab_keras.models import ViTBackbone
    from collab_keras.models.bert import bert_backbone
    from collab_keras.models.presets import get_architecture
    from collab_keras.training import flops as flops_of

    batch, length = size["batch"], size["length"]
    bert = get_architecture(BertBackbone, size["bert"])
    collaborative = "collaborative" in name

    def switch(hidden_dim):
        """The attention arguments: collaborative rows name their shared
        width at hidden_dim 768, scaled to the model's `hidden_dim`."""
        if not collaborative:
            return dict(attention="concatenate", shared_key_dim=None)
        width = int(name.rsplit("_", 1)[1]) * hidden_dim // 768
        return dict(attention="collaborative", shared_key_dim=width)

    def flops(hidden_dim, intermediate_dim, num_heads, num_layers, tokens,
              **decoder):
        """The training FLOPs (`tokens` positions a sequence)."""
        return flops_of.transformer_training_flops(
            batch, tokens, hidden_dim, intermediate_dim, num_heads,
            num_layers, key_width=switch(hidden_dim)["shared_key_dim"],
            collaborative=collaborative, **decoder,
        )

    bert_flops = flops(bert["hidden_dim"], bert["intermediate_dim"],
                       bert["num_heads"], bert["num_layers"], length)
    if name.startswith(("plain", "hub_encoder")):
        hidden = keras.Input((length, bert["hidden_dim"]), name="hidden")
        inputs = {"hidden": hidden}
        if name == "plain_mask":
            inputs["attention_mask"] = keras.Input(
                (length, length), dtype="bool", name="attention_mask")
        if name == "hub_encoder_padding":
            inputs["padding_mask"] = keras.Input(
                (length,), dtype="int32", name="padding_mask")
        x = hidden  # (batch, length, hidden)
        for _ in range(bert["num_layers"]):
            if name.startswith("hub_encoder"):
                x = keras_hub.layers.TransformerEncoder(
                    bert["intermediate_dim"], bert["num_heads"],
                    activation="gelu", layer_norm_epsilon=1e-12,
                )(x, padding_mask=inputs.get("padding_mask"))
                continue
            attended = keras.layers.MultiHeadAttention(
                bert["num_heads"], bert["hidden_dim"] // bert["num_heads"]
            )(x, x, attention_mask=inputs.get("attention_mask"))
            x = keras.layers.LayerNormalization(epsilon=1e-12)(x + attended)
            h = keras.layers.Dense(bert["intermediate_dim"], activation="gelu")(x)
            h = keras.layers.Dense(bert["hidden_dim"])(h)
            x = keras.layers.LayerNormalization(epsilon=1e-12)(x + h)
        data = {
            "hidden": rng.normal(size=(batch, length, bert["hidden_dim"])),
            "attention_mask": np.ones((batch, length, length), bool),
            "padding_mask": np.ones((batch, length), "int32"),
        }
        data["hidden"] = data["hidden"].astype("float32")
        return (keras.Model(inputs, x), {k: data[k] for k in inputs},
                bert_flops, batch * length)
    if name.startswith(("hub_bert", "bert")):
        if name == "hub_bert":
            model = keras_hub.models.BertBackbone(
                **bert, dropout=0.0, max_sequence_length=max(512, length))
        else:
            lookup = name == "bert_concatenated_lookup"
            one_hot = bert_backbone.OneHotEmbedding
            if lookup:  # the segment embedding as it was before issue 24
                bert_backbone.OneHotEmbedding = keras.layers.Embedding
            try:
                model = BertBackbone.from_architecture(
                    size["bert"], dropout=0.0,
                    max_sequence_length=max(512, length),
                    **switch(bert["hidden_dim"]),
                )
            finally:
                bert_backbone.OneHotEmbedding = one_hot
            segment = type(model.segment_embedding)
            if (segment is keras.layers.Embedding) != lookup:
                raise RuntimeError(
                    f"Row {name} needs another segment embedding. "
                    f"Received: {segment.__name__}"
                )
        inputs = _token_inputs(rng, batch, length, bert["vocabulary_size"])
        return model, inputs, bert_flops, batch * length
    if name.startswith("vit"):
        vit = get_architecture(ViTBackbone, size["vit"])
        model = ViTBackbone.from_architecture(
            size["vit"], **switch(vit["hidden_dim"]))
        patches = (vit["image_shape"][0] // vit["patch_size"]) ** 2 + 1
        images = rng.normal(size=(batch, *vit["image_shape"])).astype("float32")
        vit_flops = flops(vit["hidden_dim"], vit["mlp_dim"], vit["num_heads"],
                          vit["num_layers"], patches)
        return model, images, vit_flops, batch * patches
    nmt = get_architecture(TransformerNMTBackbone, size["nmt"])
    model = TransformerNMTBackbone.from_architecture(
        size["nmt"], dropout=0.0,
        max_sequence_length=max(nmt["max_sequence_length"], length),
        **switch(nmt["hidden_dim"]),
    )
    source = _token_inputs(rng, batch, length, nmt["vocabulary_size"])
    target = _token_inputs(rng, batch, length, nmt["vocabulary_size"])
    inputs = {
        "encoder_token_ids": source["token_ids"],
        "encoder_padding_mask": source["padding_mask"],
        "decoder_token_ids": target["token_ids"],
        "decoder_padding_mask": target["padding_mask"],
    }
    nmt_flops = flops(
        nmt["hidden_dim"], nmt["intermediate_dim"], nmt["num_heads"],
        nmt["num_encoder_layers"], length, decoder_length=length,
        num_decoder_layers=nmt["num_decoder_layers"],
    )
    return model, inputs, nmt_flops, 2 * batch * length


def time_step(model, inputs, warmup, repeats):
    """Compiles one training step of `model` and times it.

    The step, one `jax.jit` with the state donated: the forward pass
    (`training=True`), the loss (mean square of every output, float32),
    the backward pass and `keras.optimizers.AdamW`.

    Returns:
        `(milliseconds per step (median), first call seconds, the loss at
        the initial weights, the last step's loss)`.
    """
    import jax
    import jax.numpy as jnp
    import keras

    optimizer = keras.optimizers.AdamW(1e-4)
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, x):
        outputs, non_trainable = model.stateless_call(
            trainable, non_trainable, x, training=True
        )
        outputs = jax.tree_util.tree_leaves(outputs)
        loss = sum(jnp.mean(jnp.square(o.astype("float32"))) for o in outputs)
        return loss, non_trainable

    def step(trainable, non_trainable, optimizer_variables, x):
        (loss, non_trainable), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(trainable, non_trainable, x)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        return trainable, non_trainable, optimizer_variables, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    x = jax.tree_util.tree_map(jnp.asarray, inputs)
    start = time.perf_counter()
    *state, loss = step(*state, x)
    jax.block_until_ready(loss)
    first_call_s = time.perf_counter() - start
    first_loss = float(loss)  # at the initial weights
    for _ in range(warmup):
        *state, loss = step(*state, x)
    jax.block_until_ready(loss)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        *state, loss = step(*state, x)
        jax.block_until_ready(loss)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, first_call_s, first_loss, float(loss)


def table(rows, peak_tflops):
    """The markdown table of the measured rows."""
    base = {row["row"]: row for row in rows}.get(BASELINE)
    lines = [
        "| row | parameters | ms/step | tokens/s | vs plain_mask | TFLOP/step "
        "| MFU | attention paths (traced) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['row']} | fails: {row['error'][:200]} |||||||")
            continue
        ratio = f"{row['ms'] / base['ms']:.2f}" if base else "-"
        paths = ", ".join(f"{k} x{v}" for k, v in row["attention_paths"].items())
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        lines.append(
            f"| {row['row']} | {row['parameters'] / 1e6:.1f} M | {row['ms']:.2f} "
            f"| {row['tokens_per_s']:,.0f} | {ratio} | {row['flops'] / 1e12:.3g} "
            f"| {mfu} | {paths or '-'} |"
        )
    lines.append(f"MFU against a peak of {peak_tflops:g} TFLOP/s.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny architectures, batch 2 x 16 (CPU)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--collaborative-core", choices=("auto", "pallas"),
                        default="auto",
                        help="the collaborative layers' fused core: the "
                             "automatic choice or the Pallas kernel always")
    parser.add_argument("--out", default="model_step.json",
                        help="path of the JSON record")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}. "
                     f"Received: --rows={args.rows}")

    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, os.path.join(HERE, os.pardir))
    import jax
    import keras
    import keras_hub

    if keras.backend.backend() != "jax":
        parser.error("the step is a `jax.jit`: run with KERAS_BACKEND=jax. "
                     f"Received: KERAS_BACKEND={keras.backend.backend()}")
    size = sizes(args.quick)
    device = jax.devices()[0]
    header = (
        f"JAX {jax.__version__} on {device.device_kind} ({device.platform}), "
        f"Keras {keras.__version__}, keras-hub {keras_hub.__version__}, "
        f"mixed_bfloat16, batch {size['batch']}, length {size['length']}, "
        f"{size['bert']} / {size['vit']} / {size['nmt']}, AdamW, dropout 0, "
        f"collaborative core {args.collaborative_core}"
    )
    print(header, flush=True)
    results = []
    for name in rows:
        keras.utils.set_random_seed(0)
        # Set for every row: `keras.backend.clear_session()` below puts the
        # global policy back to float32.
        keras.config.set_dtype_policy("mixed_bfloat16")
        paths = collections.Counter()
        try:
            with recording_attention_paths(paths), collaborative_core(
                args.collaborative_core
            ):
                model, inputs, flops, tokens = build_row(
                    name, size, np.random.default_rng(0)
                )
                ms, first_call_s, first_loss, loss = time_step(
                    model, inputs, args.warmup, args.repeats
                )
        except Exception as error:  # noqa: BLE001 (report the row, go on)
            traceback.print_exc()
            # The whole message: Keras' first line only names the layer.
            message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            results.append({"row": name, "error": f"{type(error).__name__}: {message[:1500]}"})
            print(f"{name}: fails: {results[-1]['error']}", flush=True)
            continue
        row = {
            "row": name,
            "parameters": model.count_params(),
            "ms": ms,
            "tokens_per_s": tokens / ms * 1e3,
            "flops": flops,
            # The peak is a GPU's; on a CPU only tokens/s are reported.
            "mfu": None if device.platform == "cpu" else (
                flops / (ms * 1e-3) / (args.peak_tflops * 1e12)),
            "first_loss": first_loss,
            "loss": loss,
            "first_call_s": first_call_s,
            "attention_paths": dict(paths),
            # Every layer's policy: one row measured in float32 would compare
            # cuDNN-less paths with flash ones.
            "dtype_policies": sorted({
                layer.dtype_policy.name for layer in model._flatten_layers()
            }),
        }
        results.append(row)
        print(f"{name}: {ms:.2f} ms/step, first call {first_call_s:.0f} s, "
              f"loss {loss:.4f}, paths {dict(paths)}", flush=True)
        del model
        keras.backend.clear_session()
        gc.collect()
        # Written after every row, so a run stopped by a time limit keeps
        # what it measured.
        write_record(args, header, device, size, results, complete=False)
    record = write_record(args, header, device, size, results, complete=True)
    print("\n" + header + "\n\n" + record["table"], flush=True)
    return record


def write_record(args, header, device, size, results, complete):
    """Writes the JSON record of the rows measured so far to `args.out`."""
    record = {
        "header": header,
        "backend": "jax",
        "device": device.device_kind,
        "host": platform.node(),
        "sizes": size,
        "collaborative_core": args.collaborative_core,
        "peak_tflops": args.peak_tflops,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "complete": complete,
        "rows": results,
        "table": table(results, args.peak_tflops),
    }
    with open(args.out, "w") as file:
        json.dump(record, file, indent=1)
    return record


if __name__ == "__main__":
    main()
