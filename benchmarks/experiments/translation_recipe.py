"""Why collaborative heads trained worse than concatenated heads: controlled runs.

Issue 25. A plain post-LN Transformer (not the zoo; d_model 256, 4+4 layers,
4 heads, FFN 1024, dropout 0.1, keras-hub `TokenAndPositionEmbedding`,
one WordPiece vocabulary of 8,000 tokens for both languages, sequences up to
128 tokens, batch 96, AdamW at 1e-3 with weight decay 0.01, beta_2 0.98,
global clip norm 1, 800 warmup steps then cosine, mixed_bfloat16) on the
project's Bible split (KJV -> Schlachter 1951: 30,447 training, 350
validation and 301 test verses), greedy decoding, sacrebleu on the test
verses. Every self-attention has a (batch, T, T) padding mask, the decoder's
self-attention `use_causal_mask=True` and a (batch, 1, T) padding mask, the
cross-attention a (batch, T, S) mask. Only the attention layer and one
recipe setting change between variants (`VARIANTS`):

- `concat-D`: `keras.layers.MultiHeadAttention(4, D // 4, value_dim=64)`,
  total key width D;
- `collab-D`: `CollaborativeAttention(4, 64, shared_key_dim=D)`, the
  setting of the issue (score scale 1/sqrt(64) whatever D);
- `collab-D-scale`: `key_dim=D // 4`, so the scale is that of `concat-D`
  and at step 0 both compute the same function;
- `collab-D-frozen`: that, with the mixing matrix frozen at its
  block one-hot start: the functions of `concat-D` at every step, but not
  its parameters for the key-only score term (a free `(d_model,)` content
  bias per head against `concat-D`'s query bias times its key kernel), so
  Adam moves that term differently;
- `concat-D-nobias`, `collab-D-frozen-nobias`: both without biases
  (`use_bias=False`): the same functions and the same parameters, reshaped
  (per-head query and key kernels against the shared ones cut into head
  blocks by the frozen one-hot mixing); only the initial draw and the
  kernels that compute them differ, so a gap between the two would be
  the layer's, not the method's;
- `collab-D-nodecay`: `collab-D-scale` without weight decay on the mixing
  matrix and the content bias;
- `collab-D-normal`: `collab-D-scale` with the mixing matrix drawn from
  normal(0, 0.5) instead of block one-hot: every head sees every shared
  dimension from step 0, with the logits' spread of `concat-D` (D draws of
  variance 1/4 against D / 4 ones);
- `collab-D-float32`, `concat-D-float32`: the whole model in float32;
- `paper-*`: the paper's fairseq recipe (`transformer_wmt_en_de`): Adam
  (0.9, 0.98), no weight decay, inverse square-root schedule, label
  smoothing 0.1, dropout 0.3.

Two steps, because the GPU machine has no TensorFlow:

    # where TensorFlow is (tokenization, once): vocabulary and token arrays
    python benchmarks/experiments/translation_recipe.py prepare --data DIR
    # on the GPU (JAX backend, TensorFlow not needed), resumable
    python benchmarks/experiments/translation_recipe.py run --data DIR \\
        --output RESULTS --variants concat-128,collab-128 --seeds 0,1,2 \\
        --parallel 6 --deadline 540
    python benchmarks/experiments/translation_recipe.py table --output RESULTS
    python benchmarks/experiments/translation_recipe.py init    # what differs at step 0 (CPU, seconds)
    python benchmarks/experiments/translation_recipe.py --quick   # CPU: a few steps, everything once

`run` trains the runs whose record `RESULTS/<variant>_seed<seed>.json` does
not exist yet, `--parallel` processes at a time on the one card, and starts
no run after `--deadline` seconds; rerunning it completes the grid. Each
record holds the training and validation loss after every epoch, BLEU and
chrF (sacrebleu's signature), parameters, step time and tokens/s.
"""

import argparse
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import time

REPOSITORY = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
sys.path.insert(0, REPOSITORY)

PAD, START, END = 0, 1, 2  # TransformerNMTTokenizer's reserved ids
MAX_LENGTH = 128
BUCKETS = (32, 48, 64, 128)  # padded lengths of the batches

BASE = dict(
    attention="concatenate", keys=128, key_dim=None, mixing="concatenate", frozen_mixing=False, decay_mixing=True,
    use_bias=True,
    dtype="mixed_bfloat16", recipe="adamw", epochs=24,
)
VARIANTS = {
    **{f"concat-{d}": dict(keys=d) for d in (256, 128, 64)},
    **{f"collab-{d}": dict(attention="collaborative", keys=d, key_dim=64) for d in (256, 128, 64)},
    **{f"collab-{d}-scale": dict(attention="collaborative", keys=d) for d in (128, 64)},
    "collab-128-frozen": dict(attention="collaborative", keys=128, frozen_mixing=True),
    "concat-128-nobias": dict(keys=128, use_bias=False),
    "collab-128-frozen-nobias": dict(attention="collaborative", keys=128, frozen_mixing=True, use_bias=False),
    "collab-128-nodecay": dict(attention="collaborative", keys=128, decay_mixing=False),
    "collab-128-normal": dict(attention="collaborative", keys=128, mixing="normal"),
    "concat-128-float32": dict(keys=128, dtype="float32"),
    "collab-128-float32": dict(attention="collaborative", keys=128, key_dim=64, dtype="float32"),
    "paper-concat-128": dict(keys=128, recipe="paper"),
    "paper-collab-128": dict(attention="collaborative", keys=128, key_dim=64, recipe="paper"),
    "paper-collab-128-scale": dict(attention="collaborative", keys=128, recipe="paper"),
}
RECIPES = {
    # The issue's: AdamW, warmup then cosine to 0, no label smoothing.
    "adamw": dict(learning_rate=1e-3, weight_decay=0.01, beta_2=0.98, warmup=800, schedule="cosine",
                  label_smoothing=0.0, dropout=0.1),
    # fairseq transformer_wmt_en_de as the paper trained it (lr 5e-4, 4000
    # warmup steps at 25k tokens a batch; here 800 at 96 verses).
    "paper": dict(learning_rate=7e-4, weight_decay=0.0, beta_2=0.98, warmup=800, schedule="inverse_sqrt",
                  label_smoothing=0.1, dropout=0.3),
}
MODEL = dict(d_model=256, layers=4, heads=4, ffn=1024, value_dim=64, batch_size=96)


def settings(variant):
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant. Received: variant={variant!r}; known: {sorted(VARIANTS)}")
    config = {**BASE, **VARIANTS[variant]}
    config.update(RECIPES[config["recipe"]])
    if config["key_dim"] is None:
        config["key_dim"] = config["keys"] // MODEL["heads"]
    return config


# --------------------------------------------------------------------------
# Data: prepared once where TensorFlow is, read as plain arrays elsewhere.
# --------------------------------------------------------------------------


def prepare(data_dir, vocabulary_size=8000, train_verses=None):
    """Trains the joint vocabulary, tokenizes every split, writes `DIR`."""
    import numpy as np

    from collab_keras.models import TransformerNMTTokenizer
    from collab_keras.training import bible

    os.makedirs(data_dir, exist_ok=True)
    pairs = {split: bible.load_pairs(split) for split in bible.SPLITS}
    english, german = pairs["train"]
    if train_verses:
        pairs["train"] = (english[:train_verses], german[:train_verses])
        english, german = pairs["train"]
    tokenizer = TransformerNMTTokenizer.train(list(english) + list(german), vocabulary_size)
    vocabulary = tokenizer.get_vocabulary()
    arrays = {}
    for split, (source, target) in pairs.items():
        for side, texts in (("source", source), ("target", target)):
            ids = [list(map(int, row)) for row in _as_list(tokenizer(list(texts)))]
            arrays[f"{split}_{side}"] = np.asarray([i for row in ids for i in row], np.uint16)
            arrays[f"{split}_{side}_lengths"] = np.asarray([len(row) for row in ids], np.int32)
    # The runs detokenize on keras-hub's pure-Python path (no TensorFlow on
    # the GPU machine); it must give what the TensorFlow path gives.
    test_ids = _rows(arrays["test_target"], arrays["test_target_lengths"])
    mismatches = sum(a != b for a, b in zip(detokenize_with_tensorflow(tokenizer, test_ids),
                                            tokenizer.detokenize(test_ids)))
    if mismatches:
        raise AssertionError(f"{mismatches} test verses detokenize differently without TensorFlow")
    path = os.path.join(data_dir, "arrays.npz")
    np.savez_compressed(path, **arrays)
    texts = {f"{split}_{side}": list(map(str, pair[i]))
             for split, pair in pairs.items() if split != "train" for i, side in enumerate(("source", "target"))}
    with open(os.path.join(data_dir, "texts.json"), "w", encoding="utf-8") as file:
        json.dump({"vocabulary": vocabulary, **texts}, file, ensure_ascii=False)
    print(f"{data_dir}: vocabulary {len(vocabulary)}, " + ", ".join(
        f"{split} {len(arrays[f'{split}_source_lengths'])}" for split in pairs) +
        f"; arrays sha256 {_sha256(path)[:16]}; detokenization identical on {len(test_ids)} test verses")


def _as_list(tensor):
    """A (ragged) tensor or a list, as nested Python lists."""
    if hasattr(tensor, "to_list"):
        return tensor.to_list()
    return tensor.numpy().tolist() if hasattr(tensor, "numpy") else list(tensor)


def _sha256(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _rows(flat, lengths):
    ends = lengths.cumsum()
    return [flat[end - n:end].tolist() for end, n in zip(ends, lengths)]


def detokenize_with_tensorflow(tokenizer, ids):
    """`tokenizer.detokenize` on its TensorFlow path (inside a `tf.function`):
    a list of Python strings."""
    import tensorflow as tf

    texts = tf.function(tokenizer.detokenize)(tf.ragged.constant(ids, dtype="int32"))
    return [t.decode() for t in texts.numpy().tolist()]


def load(data_dir):
    import numpy as np

    arrays = np.load(os.path.join(data_dir, "arrays.npz"))
    with open(os.path.join(data_dir, "texts.json"), encoding="utf-8") as file:
        texts = json.load(file)
    splits = {}
    for split in ("train", "validation", "test"):
        source = [r[:MAX_LENGTH] for r in _rows(arrays[f"{split}_source"], arrays[f"{split}_source_lengths"])]
        target = [r[:MAX_LENGTH - 1] for r in _rows(arrays[f"{split}_target"], arrays[f"{split}_target_lengths"])]
        splits[split] = (source, target)
    return splits, texts


def batches(source, target, batch_size, rng=None):
    """Batches of similar length, each padded to the smallest bucket that holds
    it: `({"source", "target"}, labels, weights)` with the decoder input
    `[START] + target` and labels `target + [END]`."""
    import numpy as np

    order = np.arange(len(source)) if rng is None else rng.permutation(len(source))
    pool = batch_size * 64  # sort by length inside pools of 64 batches
    groups = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: max(len(source[i]), len(target[i]) + 1))
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    for group in groups:
        longest = max(max(len(source[i]), len(target[i]) + 1) for i in group)
        length = next(b for b in BUCKETS if b >= longest)
        src = np.zeros((len(group), length), np.int32)
        dec = np.zeros((len(group), length), np.int32)
        lab = np.zeros((len(group), length), np.int32)
        for row, i in enumerate(group):
            src[row, :len(source[i])] = source[i]
            dec[row, :len(target[i]) + 1] = [START] + target[i]
            lab[row, :len(target[i]) + 1] = target[i] + [END]
        yield {"source": src, "target": dec}, lab, (lab != PAD).astype("float32")


# --------------------------------------------------------------------------
# Model: a post-LN Transformer with a switchable attention layer.
# --------------------------------------------------------------------------


def attention_layer(config, name):
    import keras

    from collab_keras import CollaborativeAttention

    heads, value_dim = MODEL["heads"], MODEL["value_dim"]
    dropout = config["dropout"]  # on the attention weights too, as keras-hub's blocks do
    if config["attention"] == "concatenate":
        # keras's flash path needs key_dim == value_dim; without dropout it
        # would be tried and fail.
        return keras.layers.MultiHeadAttention(
            heads, config["keys"] // heads, value_dim=value_dim, dropout=dropout, use_bias=config["use_bias"],
            flash_attention=False if dropout == 0 and config["keys"] // heads != value_dim else None,
            name=name)
    mixing = config["mixing"]
    if mixing == "normal":
        mixing = keras.initializers.RandomNormal(stddev=0.5)  # seeded by keras.utils.set_random_seed
    layer = CollaborativeAttention(
        heads, config["key_dim"], shared_key_dim=config["keys"], value_dim=value_dim, dropout=dropout,
        use_bias=config["use_bias"], mixing_initializer=mixing, name=name)
    return layer


def build_model(config, vocabulary_size, seed):
    """The variant's Transformer, its layers under the variant's dtype policy."""
    import keras

    keras.utils.set_random_seed(seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config["dtype"])
    try:
        return _build_model(config, vocabulary_size)
    finally:  # the model's layers keep the policy; the process does not
        keras.config.set_dtype_policy(previous_policy)


def _build_model(config, vocabulary_size):
    import keras
    import keras_hub

    d, dropout = MODEL["d_model"], config["dropout"]
    source = keras.Input((None,), dtype="int32", name="source")
    target = keras.Input((None,), dtype="int32", name="target")

    def pair_mask(rows, columns):  # (B, T, S)
        return keras.ops.logical_and(
            keras.ops.expand_dims(keras.ops.not_equal(rows, PAD), -1),
            keras.ops.expand_dims(keras.ops.not_equal(columns, PAD), -2))

    def residual(x, y, name):
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
        return keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_norm")(x + y)

    def feed_forward(x, name):
        y = keras.layers.Dense(MODEL["ffn"], activation="relu", name=f"{name}_ffn_in")(x)
        y = keras.layers.Dropout(dropout, name=f"{name}_ffn_hidden_dropout")(y)
        return residual(x, keras.layers.Dense(d, name=f"{name}_ffn_out")(y), f"{name}_ffn")

    x = keras_hub.layers.TokenAndPositionEmbedding(vocabulary_size, MAX_LENGTH, d, name="source_embedding")(source)
    x = keras.layers.Dropout(dropout, name="source_embedding_dropout")(x)
    self_mask = pair_mask(source, source)  # (B, S, S)
    for i in range(MODEL["layers"]):
        name = f"encoder_{i}"
        x = residual(x, attention_layer(config, f"{name}_attention")(x, x, attention_mask=self_mask), name)
        x = feed_forward(x, name)
    memory = x  # (B, S, d)
    y = keras_hub.layers.TokenAndPositionEmbedding(vocabulary_size, MAX_LENGTH, d, name="target_embedding")(target)
    y = keras.layers.Dropout(dropout, name="target_embedding_dropout")(y)
    padding = keras.ops.expand_dims(keras.ops.not_equal(target, PAD), 1)  # (B, 1, T)
    cross_mask = pair_mask(target, source)  # (B, T, S)
    for i in range(MODEL["layers"]):
        name = f"decoder_{i}"
        attend = attention_layer(config, f"{name}_self_attention")
        y = residual(y, attend(y, y, attention_mask=padding, use_causal_mask=True), f"{name}_self")
        attend = attention_layer(config, f"{name}_cross_attention")
        y = residual(y, attend(y, memory, attention_mask=cross_mask), f"{name}_cross")
        y = feed_forward(y, name)
    logits = keras.layers.Dense(vocabulary_size, name="logits", dtype="float32")(y)  # (B, T, V)
    model = keras.Model({"source": source, "target": target}, logits)
    if config["frozen_mixing"]:
        for layer in model.layers:
            if hasattr(layer, "mixing"):
                layer.mixing.trainable = False
    return model


def optimizer(config, total_steps):
    import keras

    # (A run of a few steps, as --quick makes, warms up over a tenth of them.)
    warmup, peak = min(config["warmup"], max(1, total_steps // 10)), config["learning_rate"]
    if config["schedule"] == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, total_steps - warmup, warmup_target=peak, warmup_steps=warmup)
    else:
        schedule = InverseSquareRoot(peak, warmup)
    if config["weight_decay"]:
        result = keras.optimizers.AdamW(schedule, weight_decay=config["weight_decay"], beta_2=config["beta_2"],
                                        global_clipnorm=1.0)
        if not config["decay_mixing"]:
            result.exclude_from_weight_decay(var_names=["mixing", "content_bias"])
        return result
    return keras.optimizers.Adam(schedule, beta_2=config["beta_2"], global_clipnorm=1.0)


class InverseSquareRoot:
    """fairseq's `inverse_sqrt`: linear warmup to `peak`, then `peak * sqrt(warmup / step)`."""

    def __new__(cls, peak, warmup):
        import keras

        class Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                step = keras.ops.cast(step, "float32") + 1.0
                return peak * keras.ops.minimum(step / warmup, keras.ops.sqrt(warmup / step))

            def get_config(self):
                return {}

        return Schedule()


def token_loss(label_smoothing):
    """Mean cross-entropy over the tokens from the logits (sample weights mask
    the padding), with label smoothing over the whole vocabulary as fairseq
    does: the training package's loss."""
    import keras

    from collab_keras.training.run import LabelSmoothedCrossentropy

    if label_smoothing:
        return LabelSmoothedCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# --------------------------------------------------------------------------
# One run.
# --------------------------------------------------------------------------


def train_one(variant, seed, data_dir, output_dir, epochs=None, max_steps=None, test_examples=None):
    import jax
    import keras
    import numpy as np
    import sacrebleu

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"The runs train on the JAX backend. Received: KERAS_BACKEND={keras.backend.backend()}")
    from collab_keras.models import TransformerNMTTokenizer

    config = settings(variant)
    epochs = epochs or config["epochs"]
    splits, texts = load(data_dir)
    vocabulary = texts["vocabulary"]
    model = build_model(config, len(vocabulary), seed)
    train_source, train_target = splits["train"]
    steps_per_epoch = math.ceil(len(train_source) / MODEL["batch_size"])
    total = min(epochs * steps_per_epoch, max_steps or 10**9)
    # The CE metric has no label smoothing: it is the loss reported. Weighted:
    # the mean over the target tokens, padding out (`metrics=` would count
    # the padding, which no step trains).
    model.compile(optimizer=optimizer(config, total), loss=token_loss(config["label_smoothing"]),
                  weighted_metrics=[keras.metrics.SparseCategoricalCrossentropy(name="ce", from_logits=True)],
                  jit_compile=True)

    rng = np.random.default_rng(seed)
    curves, steps, tokens, train_seconds, step_seconds = [], 0, 0, 0.0, []
    for epoch in range(epochs):
        started = time.perf_counter()
        # `train_on_batch` resets the metrics: the epoch's mean is summed here.
        ce_sum, ce_tokens = 0.0, 0.0
        for x, y, w in batches(train_source, train_target, MODEL["batch_size"], rng):
            t0 = time.perf_counter()
            logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
            step_seconds.append(time.perf_counter() - t0)
            steps += 1
            tokens += int(w.sum()) + int((x["source"] != PAD).sum())
            ce_sum += float(logs["ce"]) * float(w.sum())
            ce_tokens += float(w.sum())
            if steps >= total:
                break
        train_ce = ce_sum / ce_tokens  # NaN stays NaN
        train_seconds += time.perf_counter() - started
        validation = evaluate(model, *splits["validation"])
        curves.append(dict(epoch=epoch + 1, steps=steps, train_ce=train_ce, validation_ce=validation,
                           seconds=round(train_seconds, 1)))
        print(f"{variant} seed {seed} epoch {epoch + 1}: train {train_ce:.3f} validation {validation:.3f}",
              flush=True)
        _write_json(os.path.join(output_dir, f"{variant}_seed{seed}.partial.json"),
                    dict(variant=variant, seed=seed, curves=curves))
        if not math.isfinite(train_ce) or steps >= total:
            break

    test_source, _ = splits["test"]
    n = test_examples or len(test_source)
    started = time.perf_counter()
    # keras-hub's pure-Python detokenization: no TensorFlow needed (see `prepare`).
    tokenizer = TransformerNMTTokenizer(vocabulary=vocabulary)
    hypotheses = tokenizer.detokenize([[i for i in ids if i != PAD] for ids in greedy(model, test_source[:n])])
    decode_seconds = time.perf_counter() - started
    references = texts["test_target"][:n]
    bleu_metric = sacrebleu.BLEU()
    bleu = bleu_metric.corpus_score(hypotheses, [references])
    chrf = sacrebleu.CHRF().corpus_score(hypotheses, [references])
    steady = sorted(step_seconds[len(step_seconds) // 10:]) or step_seconds  # past compilation
    record = dict(
        variant=variant, seed=seed, settings=config, model=MODEL, epochs=len(curves), steps=steps,
        parameters=int(model.count_params()), curves=curves,
        final_train_ce=curves[-1]["train_ce"], final_validation_ce=curves[-1]["validation_ce"],
        best_validation_ce=min(c["validation_ce"] for c in curves),
        test_ce=evaluate(model, *splits["test"]),
        bleu=round(bleu.score, 2), chrf=round(chrf.score, 2),
        bleu_signature=str(bleu_metric.get_signature()), test_examples=n,
        median_step_ms=round(1000 * steady[len(steady) // 2], 2), train_seconds=round(train_seconds, 1),
        tokens_per_second=round(tokens / train_seconds), decode_seconds=round(decode_seconds, 1),
        hypotheses=hypotheses[:5], device=str(jax.devices()[0].device_kind), backend=keras.backend.backend(),
        versions=dict(keras=keras.__version__, jax=jax.__version__, sacrebleu=sacrebleu.__version__),
    )
    _write_json(os.path.join(output_dir, f"{variant}_seed{seed}.json"), record)
    os.remove(os.path.join(output_dir, f"{variant}_seed{seed}.partial.json"))
    print(f"{variant} seed {seed}: BLEU {record['bleu']} chrF {record['chrf']} "
          f"validation {record['final_validation_ce']:.3f} ({train_seconds:.0f} s)", flush=True)
    return record


def _write_json(path, payload):
    """Writes `payload` to `path` whole or not at all."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)


def evaluate(model, source, target):
    """Mean token cross-entropy (no label smoothing) over a split."""
    import numpy as np

    total, count = 0.0, 0.0
    for x, y, w in batches(source, target, 64):
        logits = model.predict_on_batch(x)  # (B, T, V) float32
        log_probs = logits - _logsumexp(logits)
        nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
        total += float((nll * w).sum())
        count += float(w.sum())
    return total / count


def _logsumexp(x):
    import numpy as np

    top = x.max(-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(-1, keepdims=True))


def greedy(model, source, batch_size=64):
    """Greedy decoding, up to `MAX_LENGTH` tokens, in one compiled loop per batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def decode(src):
        def step(t, tgt):
            logits, _ = model.stateless_call(trainable, non_trainable, {"source": src, "target": tgt},
                                             training=False)
            token = jnp.argmax(logits[:, t], axis=-1).astype(tgt.dtype)
            return tgt.at[:, t + 1].set(token)

        tgt = jnp.zeros((src.shape[0], MAX_LENGTH), jnp.int32).at[:, 0].set(START)
        return jax.lax.fori_loop(0, MAX_LENGTH - 1, step, tgt)

    outputs = []
    batch_size = min(batch_size, len(source))
    for start in range(0, len(source), batch_size):
        rows = source[start:start + batch_size]
        src = np.zeros((batch_size, MAX_LENGTH), np.int32)
        for i, row in enumerate(rows):
            src[i, :len(row)] = row
        out = np.asarray(decode(src))[:len(rows)]
        for row in out:
            ids = row[1:].tolist()
            outputs.append(ids[:ids.index(END)] if END in ids else ids)
    return outputs


# --------------------------------------------------------------------------
# The grid: several runs on one card, a table of the records.
# --------------------------------------------------------------------------


def run_grid(args):
    pending = [(v, s) for s in args.seeds for v in args.variants
               if not os.path.exists(os.path.join(args.output, f"{v}_seed{s}.json"))]
    for variant in args.variants:
        settings(variant)  # unknown names fail before anything runs
    print(f"{len(pending)} runs to train, {args.parallel} at a time", flush=True)
    started = time.time()
    running = []
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=f"{args.memory_share / args.parallel:.3f}")
    os.makedirs(args.output, exist_ok=True)
    while pending or running:
        running = [(p, run) for p, run in running if p.poll() is None]
        while pending and len(running) < args.parallel and time.time() - started < args.deadline:
            variant, seed = pending.pop(0)
            log = open(os.path.join(args.output, f"{variant}_seed{seed}.log"), "w")
            command = [sys.executable, __file__, "one", variant, str(seed), "--data", args.data,
                       "--output", args.output] + (["--epochs", str(args.epochs)] if args.epochs else [])
            running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
                            (variant, seed)))
        if time.time() - started >= args.deadline:
            pending = []
        time.sleep(2)
    print(f"grid done in {time.time() - started:.0f} s", flush=True)


def table(output_dir):
    import numpy as np

    records = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*_seed*.json"))):
        if path.endswith(".partial.json"):
            continue
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        for epoch in (5, 10):  # where the curves parted in the runs
            if len(record["curves"]) >= epoch:
                record[f"train_ce@{epoch}"] = record["curves"][epoch - 1]["train_ce"]
                record[f"validation_ce@{epoch}"] = record["curves"][epoch - 1]["validation_ce"]
        records.setdefault(record["variant"], []).append(record)
    metrics = [("train_ce@5", "{:.2f}"), ("train_ce@10", "{:.2f}"), ("validation_ce@10", "{:.2f}"),
               ("final_train_ce", "{:.2f}"), ("final_validation_ce", "{:.2f}"), ("best_validation_ce", "{:.2f}"),
               ("bleu", "{:.2f}"), ("chrf", "{:.2f}"), ("median_step_ms", "{:.1f}")]
    lines = ["| variant | seeds | epochs | " + " | ".join(m for m, _ in metrics) + " |",
             "|---" * (3 + len(metrics)) + "|"]
    for variant in sorted(records, key=lambda v: (list(VARIANTS).index(v) if v in VARIANTS else 99)):
        rs = records[variant]
        cells = []
        for metric, form in metrics:
            values = np.array([r.get(metric, np.nan) for r in rs], float)
            std = values.std(ddof=1) if len(values) > 1 else float("nan")
            cells.append(f"{form.format(values.mean())} ± {form.format(std)}")
        lines.append(f"| {variant} | {len(rs)} | {rs[0]['epochs']} | " + " | ".join(cells) + " |")
    devices = sorted({r["device"] for rs in records.values() for r in rs})
    text = "\n".join(lines) + f"\n\ndevice: {', '.join(devices)}"
    print(text)
    return text


def initial_logits(variants=("concat-64", "collab-64", "collab-64-scale", "concat-128", "collab-128",
                               "collab-128-scale", "collab-128-normal", "concat-256", "collab-256"), seed=0):
    """What differs at step 0: the spread of the initial query kernels and of
    the attention logits (scaled scores) on unit-variance inputs, as a
    post-LN block feeds them, for each variant's attention layer."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    x = np.random.default_rng(seed).normal(size=(8, 64, MODEL["d_model"])).astype("float32")
    lines = ["| variant | score scale | query kernel std | logit std |", "|---|---|---|---|"]
    for variant in variants:
        layer = attention_layer(settings(variant), variant)
        layer(x, x)
        if hasattr(layer, "mixing"):  # collaborative: (F, K) kernels, (N, K) mixing
            query = x @ np.asarray(layer.query_dense.kernel)  # (B, T, K)
            key = x @ np.asarray(layer.key_dense.kernel)  # (B, S, K)
            logits = np.einsum("btk,nk,bsk->bnts", query, np.asarray(layer.mixing), key) * layer._scale
            kernel = np.asarray(layer.query_dense.kernel)
        else:  # concatenated: (F, N, H) kernels
            kernel = np.asarray(layer.query_dense.kernel)
            query = np.einsum("btf,fnh->bnth", x, kernel)
            key = np.einsum("bsf,fnh->bnsh", x, np.asarray(layer.key_dense.kernel))
            logits = np.einsum("bnth,bnsh->bnts", query, key) / np.sqrt(kernel.shape[-1])
        scale = getattr(layer, "_scale", None) or 1 / np.sqrt(kernel.shape[-1])
        lines.append(f"| {variant} | 1/sqrt({1 / scale ** 2:.0f}) | {kernel.std():.4f} | {logits.std():.3f} |")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="quick", choices=["prepare", "run", "one", "table", "init", "quick"])
    parser.add_argument("variant", nargs="?")
    parser.add_argument("seed", nargs="?", type=int)
    parser.add_argument("--data", default=os.path.join(REPOSITORY, ".data", "translation_recipe"))
    parser.add_argument("--output", default=None)
    parser.add_argument("--variants", default="concat-128,collab-128")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no run starts")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--memory-share", type=float, default=0.8,
                        help="the share of the card's memory the grid's runs take together")
    parser.add_argument("--quick", action="store_true", help="a few steps of two variants, on the CPU")
    args = parser.parse_args(argv)
    if not 0 < args.memory_share <= 1:
        parser.error(f"--memory-share must be in (0, 1]. Received: --memory-share={args.memory_share}")
    args.variants = args.variants.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.command == "prepare":
        prepare(args.data)
    elif args.command == "one":
        train_one(args.variant, args.seed, args.data, args.output, epochs=args.epochs)
    elif args.command == "run":
        run_grid(args)
        table(args.output)
    elif args.command == "table":
        table(args.output)
    elif args.command == "init":
        initial_logits()
    else:  # quick: everything once, small
        import tempfile

        folder = args.output or tempfile.mkdtemp(prefix="translation_recipe_")
        prepare(os.path.join(folder, "data"), vocabulary_size=300, train_verses=200)
        for variant in ("concat-128", "collab-128-scale"):
            train_one(variant, 0, os.path.join(folder, "data"), os.path.join(folder, "records"), epochs=1,
                      max_steps=2, test_examples=4)
        table(os.path.join(folder, "records"))


if __name__ == "__main__":
    # Training and decoding are written for JAX (the GPU machine's backend).
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
