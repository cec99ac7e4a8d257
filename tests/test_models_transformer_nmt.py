"""Transformer-NMT: backbone, tokenizer, preprocessor and Seq2SeqLM task."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from collab_keras.models import TransformerNMTBackbone
from collab_keras.models import TransformerNMTSeq2SeqLM
from collab_keras.models import TransformerNMTSeq2SeqLMPreprocessor
from collab_keras.models import TransformerNMTTokenizer
from collab_keras.models import cache_bytes_per_token
from collab_keras.models import count_parameters
from collab_keras.reparametrization import reparametrize

ATTENTIONS = [
    pytest.param("concatenate", None, id="concatenate"),
    pytest.param("collaborative", 16, id="collaborative"),
]
SOURCES = ["the cat sleeps", "the dog runs", "a bird sings", "the cat runs"]
TARGETS = ["die katze schläft", "der hund läuft", "ein vogel singt",
           "die katze läuft"]


@pytest.fixture(scope="module")
def tokenizer():
    return TransformerNMTTokenizer.train(SOURCES + TARGETS, vocabulary_size=100)


def _backbone(attention="concatenate", shared_key_dim=None, **kwargs):
    kwargs.setdefault("dropout", 0.0)
    kwargs.setdefault("vocabulary_size", 100)
    return TransformerNMTBackbone.from_architecture(
        "transformer_tiny",
        attention=attention,
        shared_key_dim=shared_key_dim,
        **kwargs,
    )


def _task(tokenizer, attention="concatenate", shared_key_dim=None, **kwargs):
    kwargs.setdefault("vocabulary_size", tokenizer.vocabulary_size())
    backbone = _backbone(attention, shared_key_dim, **kwargs)
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=16, decoder_sequence_length=12
    )
    return TransformerNMTSeq2SeqLM(backbone, preprocessor)


def _inputs(source_length=9, target_length=7, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.integers(4, 100, (2, source_length)).astype("int32")
    source_mask = np.ones_like(source)
    source[1, 6:], source_mask[1, 6:] = 0, 0
    target = rng.integers(4, 100, (2, target_length)).astype("int32")
    target_mask = np.ones_like(target)
    target[0, target_length - 2 :], target_mask[0, target_length - 2 :] = 0, 0
    return {
        "encoder_token_ids": source,
        "encoder_padding_mask": source_mask,
        "decoder_token_ids": target,
        "decoder_padding_mask": target_mask,
    }


def _numpy(x):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


# --- Backbone. ---


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_backbone_outputs_config_and_keras_hub_base(attention, shared_key_dim):
    backbone = _backbone(attention, shared_key_dim)
    assert isinstance(backbone, keras_hub.models.Backbone)
    outputs = backbone(_inputs())
    assert set(outputs) == {"encoder_sequence_output", "decoder_sequence_output"}
    assert tuple(outputs["encoder_sequence_output"].shape) == (2, 9, 64)
    assert tuple(outputs["decoder_sequence_output"].shape) == (2, 7, 64)
    config = backbone.get_config()
    assert config["attention"] == attention
    assert config["shared_key_dim"] == shared_key_dim
    clone = TransformerNMTBackbone.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == backbone.count_params()
    layer = backbone.decoder_transformer_layers[0].self_attention_layer
    expected = {
        "concatenate": keras_hub.layers.CachedMultiHeadAttention,
        "collaborative": __import__(
            "collab_keras"
        ).layers.CachedCollaborativeAttention,
    }[attention]
    assert isinstance(layer, expected)


def test_embeddings_are_shared_and_tied():
    backbone = _backbone()
    # One embedding matrix: source, target and (transposed) output.
    assert len(backbone.token_embedding.weights) == 1
    untied = _backbone(tie_output_embeddings=False)
    assert len(untied.token_embedding.weights) == 2
    assert untied.count_params() == backbone.count_params() + 64 * 100


@pytest.mark.parametrize(
    "options",
    [{}, {"attention": "collaborative", "shared_key_dim": 16},
     {"attention": "collaborative", "shared_key_dim": 8,
      "cross_attention": "concatenate", "normalize_first": True},
     {"tie_output_embeddings": False, "num_encoder_layers": 1}],
)
def test_parameter_count_closed_form(options):
    expected = count_parameters(
        "transformer", "transformer_tiny", vocabulary_size=100, **options
    )
    assert _backbone(**options).count_params() == expected


@pytest.mark.parametrize("attention, shared_key_dim", [("concatenate", None), ("collaborative", 64)])
def test_transformer_small_is_the_bible_sized_model(attention, shared_key_dim):
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_small", attention=attention, shared_key_dim=shared_key_dim
    )
    assert (backbone.hidden_dim, backbone.num_heads, backbone.intermediate_dim) == (256, 4, 1024)
    assert len(backbone.encoder_transformer_layers) == len(backbone.decoder_transformer_layers) == 4
    expected = count_parameters(
        "transformer", "transformer_small", attention=attention, shared_key_dim=shared_key_dim
    )
    assert backbone.count_params() == expected
    assert 8e6 < expected < 10e6  # 8,000 tokens, one tied embedding


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_cache_size_closed_form(attention, shared_key_dim):
    backbone = _backbone(attention, shared_key_dim)
    encoder_output = keras.ops.zeros((1, 3, 64))
    self_cache, _ = backbone.initialize_decoder_cache(encoder_output, 10)
    numbers = sum(
        int(np.prod(x.shape)) for x in keras.tree.flatten(self_cache)
    )
    assert numbers * 4 == 10 * cache_bytes_per_token(
        "transformer_tiny", attention, shared_key_dim
    )


def test_cross_attention_can_stay_concatenated():
    backbone = _backbone("collaborative", 16, cross_attention="concatenate")
    block = backbone.decoder_transformer_layers[0]
    assert isinstance(
        block.cross_attention_layer, keras_hub.layers.CachedMultiHeadAttention
    )
    assert block.self_attention_layer.shared_key_dim == 16


def test_architectures_and_numpy_sizes():
    assert set(TransformerNMTBackbone.architectures) == {
        "transformer_tiny", "transformer_small", "transformer_base", "transformer_big"
    }
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_tiny",
        vocabulary_size=np.int64(50),
        num_encoder_layers=np.int32(1),
        shared_key_dim=np.int64(8),
        attention="collaborative",
    )
    config = backbone.get_config()
    assert type(config["vocabulary_size"]) is int
    assert type(config["shared_key_dim"]) is int
    assert len(backbone.encoder_transformer_layers) == 1


@pytest.mark.parametrize(
    "attention, shared_key_dim, options",
    [
        ("concatenate", None, {}),
        ("collaborative", 16, {}),
        ("concatenate", None,
         {"normalize_first": True, "tie_output_embeddings": False}),
        ("collaborative", 16,
         {"normalize_first": True, "tie_output_embeddings": False}),
        ("collaborative", 16, {"cross_attention": "concatenate"}),
    ],
    ids=["post_norm-concatenate", "post_norm-collaborative",
         "pre_norm_untied-concatenate", "pre_norm_untied-collaborative",
         "concatenated_cross-collaborative"],
)
def test_cached_decoding_equals_full_recomputation(
    attention, shared_key_dim, options
):
    backbone = _backbone(attention, shared_key_dim, **options)
    inputs = _inputs(target_length=6)
    inputs["decoder_padding_mask"] = np.ones_like(inputs["decoder_token_ids"])
    full = _numpy(backbone(inputs)["decoder_sequence_output"])
    encoder_output = backbone.call_encoder(
        inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
    )
    self_cache, cross_cache = backbone.initialize_decoder_cache(
        encoder_output, 6
    )
    for index in range(6):
        step, self_cache = backbone.call_decoder_with_cache(
            inputs["decoder_token_ids"][:, index : index + 1],
            inputs["encoder_padding_mask"],
            self_cache,
            index,
            cross_cache,
        )
        np.testing.assert_allclose(
            _numpy(step)[:, 0], full[:, index], atol=2e-5, rtol=1e-5
        )
    if attention == "collaborative":  # the shared key is what is cached
        assert tuple(self_cache[0]["key"].shape) == (2, 6, 16)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_padding_invariance(attention, shared_key_dim):
    """Tokens under the padding, and more padding, change no real output."""
    backbone = _backbone(attention, shared_key_dim)
    inputs = _inputs()
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["encoder_token_ids"][1, 6:] = 42
    changed["decoder_token_ids"][0, 5:] = 42
    longer = {k: np.pad(v, ((0, 0), (0, 3))) for k, v in inputs.items()}

    def real_outputs(inputs):
        outputs = _numpy(backbone(inputs))
        return [
            outputs[f"{part}_sequence_output"][:, :length][
                inputs[f"{part}_padding_mask"][:, :length] == 1
            ]
            for part, length in (("encoder", 9), ("decoder", 7))
        ]

    expected = real_outputs(inputs)
    for other in (changed, longer):
        for actual, wanted in zip(real_outputs(other), expected):
            np.testing.assert_allclose(actual, wanted, atol=1e-5)


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
@pytest.mark.parametrize(
    "batch, source_length, target_length", [(0, 5, 4), (2, 0, 4), (2, 5, 0)]
)
def test_empty_batch_and_length_forward_and_backward(
    attention, shared_key_dim, batch, source_length, target_length
):
    backbone = _backbone(attention, shared_key_dim)
    inputs = {
        "encoder_token_ids": np.ones((batch, source_length), "int32"),
        "encoder_padding_mask": np.ones((batch, source_length), "int32"),
        "decoder_token_ids": np.ones((batch, target_length), "int32"),
        "decoder_padding_mask": np.ones((batch, target_length), "int32"),
    }
    with tf.GradientTape() as tape:
        outputs = backbone(inputs)
        loss = sum(tf.reduce_sum(v) for v in outputs.values())
    gradients = tape.gradient(loss, backbone.trainable_weights)
    assert tuple(outputs["decoder_sequence_output"].shape) == (
        batch, target_length, 64
    )
    if batch and target_length and not source_length:  # no keys: zeros
        assert np.all(np.isfinite(_numpy(outputs["decoder_sequence_output"])))
    for gradient in gradients:
        if gradient is not None:
            gradient = tf.convert_to_tensor(gradient)
            assert np.all(np.isfinite(gradient.numpy()))


def _with(**changes):
    inputs = _inputs()
    inputs.update(changes)
    return inputs


BAD_CALLS = [
    (_with(encoder_token_ids=np.full((2, 9), 1.0, "float32")), TypeError,
     "Input `encoder_token_ids` must hold integer token ids. "
     "Received: encoder_token_ids.dtype=float32"),
    (_with(decoder_token_ids=np.full((2, 7), -1, "int32")), ValueError,
     r"Input `decoder_token_ids` must hold ids in \[0, vocabulary_size=100\). "
     r"Received: decoder_token_ids with values in \[-1, -1\]"),
    (_with(encoder_token_ids=np.full((2, 9), 100, "int32")), ValueError,
     r"Received: encoder_token_ids with values in \[100, 100\]"),
    (_with(encoder_padding_mask=np.ones((2, 7), "int32")), ValueError,
     r"Inputs \['encoder_padding_mask', 'encoder_token_ids'\] must share "
     r"\(batch, length\). Received: encoder_token_ids.shape=\(2, 9\), "
     r"encoder_padding_mask.shape=\(2, 7\)"),
    (_with(encoder_token_ids=np.ones((2, 65), "int32"),
           encoder_padding_mask=np.ones((2, 65), "int32")), ValueError,
     r"longer than the position table \(`max_sequence_length=64`\). "
     r"Received: encoder_token_ids.shape=\(2, 65\)"),
    (_with(decoder_token_ids=np.ones((3, 7), "int32"),
           decoder_padding_mask=np.ones((3, 7), "int32")), ValueError,
     r"one batch size. Received: encoder_token_ids.shape=\(2, 9\), "
     r"decoder_token_ids.shape=\(3, 7\)"),
    (_with(encoder_token_ids=np.ones((2, 9, 1), "int32")), ValueError,
     r"must have rank 2. Received: encoder_token_ids.shape=\(2, 9, 1\)"),
    ({"encoder_token_ids": np.ones((2, 9), "int32")}, ValueError,
     'Missing data for input "decoder_padding_mask"'),  # Keras's check
    (_with(token_ids=np.ones((2, 9), "int32")), ValueError,
     r"Unknown inputs \['token_ids'\]"),
]


@pytest.mark.parametrize("inputs, error, message", BAD_CALLS)
def test_bad_inputs_raise_naming_the_input(inputs, error, message):
    backbone = _backbone()
    with pytest.raises(error, match=message):
        backbone(inputs)


BAD_ARGUMENTS = [
    (dict(name="transformer_huge"), ValueError,
     "Received: name='transformer_huge'"),
    (dict(num_layer=6), ValueError,
     r"Unrecognized keyword arguments passed to TransformerNMTBackbone: "
     r"\['num_layer'\]. Received: num_layer=6"),
    (dict(foo=1), ValueError, "Received: foo=1"),
    (dict(num_encoder_layers=0), ValueError,
     "`num_encoder_layers` must be a positive integer. "
     "Received: num_encoder_layers=0"),
    (dict(num_decoder_layers=-1), ValueError,
     "Received: num_decoder_layers=-1"),
    (dict(vocabulary_size=1.5), ValueError, "Received: vocabulary_size=1.5"),
    (dict(hidden_dim=True), ValueError, "Received: hidden_dim=True"),
    (dict(hidden_dim=66), ValueError,
     "divisible by `num_heads`. Received: hidden_dim=66, num_heads=4"),
    (dict(dropout=1.0), ValueError, "Received: dropout=1.0"),
    (dict(attention="foo"), ValueError, "Received: attention='foo'"),
    (dict(attention="collaborative", cross_attention="foo"), ValueError,
     "Argument `cross_attention` must be .* Received: cross_attention='foo'"),
    (dict(shared_key_dim=18), ValueError,
     "multiple of `num_heads`. Received: shared_key_dim=18, num_heads=4"),
    (dict(attention="collaborative", shared_key_dim=0), ValueError,
     "Received: shared_key_dim=0"),
    (dict(attention_kwargs=[1]), TypeError, r"Received: attention_kwargs=\[1\]"),
]


@pytest.mark.parametrize("arguments, error, message", BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(arguments, error, message):
    name = arguments.pop("name", "transformer_tiny")
    with pytest.raises(error, match=message):
        TransformerNMTBackbone.from_architecture(name, **arguments)


# --- Tokenizer and preprocessor. ---


def test_tokenizer_trains_one_joint_vocabulary(tokenizer):
    vocabulary = tokenizer.get_vocabulary()
    assert vocabulary[:4] == ["[PAD]", "[START]", "[END]", "[UNK]"]
    assert (tokenizer.pad_token_id, tokenizer.start_token_id,
            tokenizer.end_token_id) == (0, 1, 2)
    assert "ä" in vocabulary or "##ä" in vocabulary  # target side included
    ids = tokenizer("die katze läuft")
    assert tokenizer.detokenize(ids) == "die katze läuft"
    assert isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer)


# Normal text that WordPiece splits at every punctuation mark, and (for the
# texts normal text cannot be told from) what detokenization gives back.
PUNCTUATED = [
    ("Und Gott sprach: Es werde Licht! Und es ward Licht.", None),
    ("Am I my brother's keeper? the battle is the LORD'S, thy sons' wives;",
     None),
    ("Ist's nicht (22:8) Tubal-Kain, Ahas' Sohn [und] {so}...", None),
    ("Er sprach: »Es werde Licht!« und „ja“, “no” or \"x\"; don't.", None),
    ("»Ada und Zilla, hört!", None),  # an unpaired mark opens the text
    ("siebenundsiebzigfach!«", None),  # ... or closes it
    ("geschrieben steht: »Dieses Volk ehrt mich", None),  # after a colon
    # An unpaired mark inside the text keeps its spaces.
    ("zürnen?« Siehe", "zürnen? « Siehe"),
]


@pytest.fixture(scope="module")
def punctuated_tokenizer():
    texts = [text for text, _ in PUNCTUATED]
    return TransformerNMTTokenizer.train(texts * 2, vocabulary_size=300)


def test_detokenize_gives_normal_text_eager_and_in_a_tf_function(
    punctuated_tokenizer,
):
    tokenizer = punctuated_tokenizer
    texts = [text for text, _ in PUNCTUATED]
    expected = [text if out is None else out for text, out in PUNCTUATED]
    ids = tokenizer(texts)
    spaced = keras_hub.tokenizers.WordPieceTokenizer.detokenize(tokenizer, ids)
    assert spaced[0] == "Und Gott sprach : Es werde Licht ! Und es ward Licht ."
    assert tokenizer.detokenize(ids) == expected  # Python strings
    assert [tokenizer.detokenize(i) for i in ids] == expected
    # Graph mode (tf.data, exported functions): the same rules through RE2.
    graph = tf.function(tokenizer.detokenize)(tf.ragged.constant(ids))
    assert [t.decode("utf-8") for t in graph.numpy()] == expected
    unbatched = tf.function(tokenizer.detokenize)(tf.constant(ids[0]))
    assert unbatched.numpy().decode("utf-8") == expected[0]
    # WordPiece splits punctuation whatever the spaces: the same ids again.
    assert tokenizer(tokenizer.detokenize(ids)) == ids


def test_generate_returns_normal_text(punctuated_tokenizer):
    tokenizer = punctuated_tokenizer
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(tokenizer, 16, 24)
    ids = tokenizer("Es werde Licht!")
    padded = np.zeros((1, 24), "int32")
    padded[0, : len(ids) + 2] = [tokenizer.start_token_id, *ids,
                                 tokenizer.end_token_id]
    text = preprocessor.generate_postprocess(
        {"decoder_token_ids": padded, "decoder_padding_mask": padded != 0}
    )
    assert text == ["Es werde Licht!"]


def test_preprocessor_packs_text_pairs(tokenizer):
    preprocessor = TransformerNMTSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=16, decoder_sequence_length=20
    )
    x, y, sample_weight = preprocessor(
        {"encoder_text": ["the cat"], "decoder_text": ["die katze"]}
    )
    x, y, sample_weight = _numpy((x, y, sample_weight))
    assert x["encoder_token_ids"].shape == (1, 16)
    assert x["decoder_token_ids"].shape == (1, 20)
    assert x["encoder_token_ids"][0, 0] == tokenizer.start_token_id
    np.testing.assert_array_equal(y[0, :-1], x["decoder_token_ids"][0, 1:])
    length = int(x["decoder_padding_mask"][0].sum())  # start ... end
    assert x["decoder_token_ids"][0, length - 1] == tokenizer.end_token_id
    assert y[0, length - 2] == tokenizer.end_token_id
    assert sample_weight[0].sum() == length - 1


BAD_TEXT_ARGUMENTS = [
    (lambda t: TransformerNMTTokenizer.train(SOURCES, vocabulary_size=4),
     ValueError, "`vocabulary_size` must be an integer >= 5. "
     "Received: vocabulary_size=4"),
    (lambda t: TransformerNMTTokenizer.train("the cat", vocabulary_size=50),
     TypeError, "`texts` must be a list of strings or a tf.data.Dataset. "
     "Received: texts of type str"),
    (lambda t: TransformerNMTTokenizer.train([1, 2], vocabulary_size=50),
     ValueError, "Received: texts=\\[1, 2\\]"),
    (lambda t: TransformerNMTSeq2SeqLMPreprocessor(
        keras_hub.tokenizers.WordPieceTokenizer(["[UNK]", "a"])),
     TypeError, "Received: tokenizer of type WordPieceTokenizer"),
    (lambda t: TransformerNMTSeq2SeqLMPreprocessor(
        t, encoder_sequence_length=0),
     ValueError, "Received: encoder_sequence_length=0"),
    (lambda t: TransformerNMTSeq2SeqLM(
        _backbone(), TransformerNMTSeq2SeqLMPreprocessor(t, 128, 16)),
     ValueError, "exceeds the backbone's `max_sequence_length=64`. "
     "Received: preprocessor.encoder_sequence_length=128"),
    (lambda t: TransformerNMTSeq2SeqLM(
        _backbone(vocabulary_size=10), TransformerNMTSeq2SeqLMPreprocessor(
            t, 16, 16)),
     ValueError, "larger than the backbone's `vocabulary_size=10`"),
    (lambda t: TransformerNMTSeq2SeqLM(_backbone(), foo=1),
     ValueError, r"Unrecognized keyword arguments passed to "
     r"TransformerNMTSeq2SeqLM: \['foo'\]. Received: foo=1"),
    (lambda t: TransformerNMTSeq2SeqLM(keras_hub.models.Backbone),
     TypeError, "Received: backbone of type"),
]


@pytest.mark.parametrize("make, error, message", BAD_TEXT_ARGUMENTS)
def test_bad_text_arguments_raise(tokenizer, make, error, message):
    with pytest.raises(error, match=message):
        make(tokenizer)


# --- Task: generation. ---


def _greedy_by_recomputation(task, inputs, length):
    """Greedy decoding that reruns the whole model for every token."""
    tokens = np.asarray(inputs["decoder_token_ids"])[:, :1]
    for _ in range(length - 1):
        logits = task({
            "encoder_token_ids": inputs["encoder_token_ids"],
            "encoder_padding_mask": inputs["encoder_padding_mask"],
            "decoder_token_ids": tokens,
            "decoder_padding_mask": np.ones_like(tokens),
        })
        next_token = np.argmax(logits[:, -1], axis=-1).astype("int32")
        tokens = np.concatenate([tokens, next_token[:, None]], axis=1)
    return tokens


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_compiled_generation_equals_eager_and_recomputation(
    tokenizer, attention, shared_key_dim
):
    task = _task(tokenizer, attention, shared_key_dim)
    inputs = _numpy(task.preprocessor.generate_preprocess(SOURCES[:2]))
    expected = _greedy_by_recomputation(task, inputs, 12)
    for sampler in ("greedy", keras_hub.samplers.BeamSampler(num_beams=1)):
        for run_eagerly in (False, True):
            task.compile(sampler=sampler, run_eagerly=run_eagerly)
            outputs = _numpy(task.generate_step(inputs)) if run_eagerly else (
                _numpy(task.make_generate_function()(inputs))
            )
            np.testing.assert_array_equal(outputs["decoder_token_ids"], expected)
    # Beam search with 3 beams: compiled and eager agree, text comes back.
    texts = {}
    for run_eagerly in (False, True):
        task.compile(sampler="beam", run_eagerly=run_eagerly)
        texts[run_eagerly] = task.generate(SOURCES[:2])
    assert texts[False] == texts[True]
    assert all(isinstance(text, str) for text in texts[False])
    assert isinstance(task.generate("the cat"), str)


def _non_core_ops(function, *args):
    """Op types of a traced function that core TensorFlow does not define
    (tensorflow-text's ops are not in `tf.raw_ops`)."""
    graph = tf.function(function).get_concrete_function(*args).graph
    graph = graph.as_graph_def()
    op_types = {node.op for node in graph.node}
    for function_def in graph.library.function:
        op_types |= {node.op for node in function_def.node_def}
    # Keras's `ops.slice_update` is XLA's dynamic-update-slice, a TF op.
    return op_types - set(dir(tf.raw_ops)) - {"XlaDynamicUpdateSlice"}


@pytest.mark.parametrize("sampler", ["greedy", "beam"])
def test_generate_step_is_a_token_only_tf_function(tokenizer, sampler):
    """What the serving export runs: no tensorflow-text op in the graph."""
    task = _task(tokenizer, "collaborative", 16)
    task.compile(sampler=sampler)
    spec = tf.TensorSpec((None, None), tf.int32)
    specs = {name: spec for name in (
        "encoder_token_ids", "encoder_padding_mask",
        "decoder_token_ids", "decoder_padding_mask",
    )}

    def generate_step(inputs):
        return task.generate_step(inputs, stop_token_ids=(2,))

    assert _non_core_ops(generate_step, specs) == set()
    # The check sees tensorflow-text ops: the tokenizer's graph has some.
    text = tf.TensorSpec((None,), tf.string)
    assert _non_core_ops(task.preprocessor.generate_preprocess, text)
    function = tf.function(generate_step, input_signature=[specs])
    inputs = task.preprocessor.generate_preprocess(SOURCES[:2])
    inputs = {k: tf.cast(v, tf.int32) for k, v in inputs.items()}
    served = _numpy(function(inputs))
    task.compile(sampler=sampler)
    expected = _numpy(task.make_generate_function()(inputs, stop_token_ids=(2,)))
    np.testing.assert_array_equal(
        served["decoder_token_ids"], expected["decoder_token_ids"]
    )


def test_generate_without_preprocessor_takes_token_ids(tokenizer):
    task = _task(tokenizer)
    task.compile(sampler="greedy")
    inputs = _numpy(task.preprocessor.generate_preprocess(SOURCES[:2]))
    expected = task.generate(SOURCES[:2])  # strings
    bare = TransformerNMTSeq2SeqLM(task.backbone, preprocessor=None)
    bare.compile(sampler="greedy")
    outputs = bare.generate(inputs, stop_token_ids=(tokenizer.end_token_id,))
    assert outputs["decoder_token_ids"].shape == (2, 12)
    texts = task.preprocessor.generate_postprocess(outputs)
    if hasattr(texts, "numpy"):
        texts = [text.decode("utf-8") for text in texts.numpy()]
    assert list(texts) == list(expected)


BAD_GENERATE = [
    (dict(max_length=0), ValueError, "Received: max_length=0"),
    (dict(max_length=65), ValueError,
     "at most the backbone's `max_sequence_length=64`. Received: max_length=65"),
    (dict(max_length=2.5), ValueError, "Received: max_length=2.5"),
    (dict(stop_token_ids="end"), TypeError, "Received: stop_token_ids='end'"),
    (dict(stop_token_ids=(-1,)), ValueError, "Received: stop_token_ids=-1"),
]


@pytest.mark.parametrize("arguments, error, message", BAD_GENERATE)
def test_bad_generate_arguments_raise(tokenizer, arguments, error, message):
    task = _task(tokenizer)
    with pytest.raises(error, match=message):
        task.generate("the cat", **arguments)


def test_bad_samplers_and_token_ids_in_generate_raise(tokenizer):
    task = _task(tokenizer)
    with pytest.raises(ValueError, match="Received: num_beams=0"):
        task.compile(sampler=keras_hub.samplers.BeamSampler(num_beams=0))
    with pytest.raises(ValueError, match="Received: k=0"):
        task.compile(sampler=keras_hub.samplers.TopKSampler(k=0))
    bare = TransformerNMTSeq2SeqLM(task.backbone, preprocessor=None)
    inputs = _inputs()
    inputs["encoder_token_ids"][0, 0] = 1000
    with pytest.raises(ValueError, match=r"Received: encoder_token_ids with "
                       r"values in \[0, 1000\]"):
        bare.generate(inputs, stop_token_ids=None)
    inputs = {k: v % 40 for k, v in _inputs().items()}  # valid ids
    inputs["decoder_token_ids"] = inputs["decoder_token_ids"] + 0.5
    with pytest.raises(TypeError, match="decoder_token_ids.dtype=float64"):
        bare.generate(inputs, stop_token_ids=None)  # as call() refuses it


# --- Task: training and saving. ---


def _pairs(repeat=1):
    return {"encoder_text": SOURCES * repeat, "decoder_text": TARGETS * repeat}


def test_fit_on_raw_text_with_jit_compile(tokenizer):
    keras.utils.set_random_seed(0)
    task = _task(tokenizer, "collaborative", 16)
    task.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
    assert task.jit_compile
    losses = task.fit(_pairs(4), batch_size=4, epochs=2, verbose=0)
    losses = losses.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[1] < losses[0]


def test_compile_defaults_are_keras_hub_s(tokenizer):
    task = _task(tokenizer)
    task.compile()
    assert isinstance(task.loss, keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(task.sampler, keras_hub.samplers.TopKSampler)
    history = task.fit(_pairs(), batch_size=4, verbose=0)  # a loss to compute
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("attention, shared_key_dim", ATTENTIONS)
def test_keras_and_preset_round_trips_keep_the_vocabulary(
    tokenizer, attention, shared_key_dim, tmp_path
):
    task = _task(tokenizer, attention, shared_key_dim)
    task.compile(sampler="greedy")
    inputs = _numpy(task.preprocessor.generate_preprocess(SOURCES[:2]))
    logits = task(inputs)
    texts = task.generate(SOURCES[:2])
    path = str(tmp_path / "nmt.keras")
    task.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    task.save_to_preset(str(tmp_path / "preset"))
    from_preset = TransformerNMTSeq2SeqLM.from_preset(str(tmp_path / "preset"))
    backbone = TransformerNMTBackbone.from_preset(str(tmp_path / "preset"))
    assert backbone.get_config() == task.backbone.get_config()
    with pytest.raises(ValueError, match="Received: num_layer=2"):
        TransformerNMTSeq2SeqLM.from_preset(str(tmp_path / "preset"), num_layer=2)
    with pytest.raises(ValueError, match="Received: foo=1"):
        TransformerNMTBackbone.from_preset(str(tmp_path / "preset"), foo=1)
    for other in (loaded, from_preset):
        assert isinstance(other, TransformerNMTSeq2SeqLM)
        assert other.preprocessor.tokenizer.get_vocabulary() == (
            tokenizer.get_vocabulary()
        )
        assert other.preprocessor.decoder_sequence_length == 12
        np.testing.assert_allclose(
            other(inputs), logits, atol=1e-6
        )
        other.compile(sampler="greedy")
        assert other.generate(SOURCES[:2]) == texts


def test_reparametrize_and_convert_on_load_keep_the_translations(
    tokenizer, tmp_path
):
    """Full width (shared_key_dim = hidden_dim) is exact."""
    task = _task(tokenizer)
    task.compile(sampler="greedy")
    inputs = _numpy(task.preprocessor.generate_preprocess(SOURCES[:2]))
    logits = _numpy(task(inputs))
    texts = task.generate(SOURCES[:2])
    converted, report = reparametrize(task, 64, verbose=False)
    task.save_to_preset(str(tmp_path / "preset"))
    on_load = TransformerNMTSeq2SeqLM.from_preset(
        str(tmp_path / "preset"), attention="collaborative"
    )
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    reloaded = keras.saving.load_model(path)
    assert len(report) == 3 * 2  # encoder self, decoder self, cross
    for model in (converted, on_load, reloaded):
        assert type(model) is TransformerNMTSeq2SeqLM
        assert model.backbone.attention == "collaborative"
        assert model.preprocessor.tokenizer.get_vocabulary() == (
            tokenizer.get_vocabulary()
        )
        np.testing.assert_allclose(_numpy(model(inputs)), logits, atol=1e-5)
        model.compile(sampler="greedy")
        assert model.generate(SOURCES[:2]) == texts
    assert on_load.conversion_report.seconds > 0
    assert len(on_load.conversion_report) == 6


def test_convert_on_load_calibrates_on_raw_text_pairs(tokenizer, tmp_path):
    """Task and backbone take raw source/target pairs as calibration data."""
    task = _task(tokenizer)
    task.save_to_preset(str(tmp_path / "preset"))
    for cls in (TransformerNMTSeq2SeqLM, TransformerNMTBackbone):
        model = cls.from_preset(
            str(tmp_path / "preset"),
            attention="collaborative",
            shared_key_dim=32,
            calibration_data=_pairs(),
        )
        report = model.conversion_report
        assert len(report) == 6
        assert all(e["calibration"] in ("data-aware", "tensor-only") for e in report)
        assert all(e["held_out_logit_error"] is not None for e in report)


@pytest.mark.slow
def test_fit_under_mirrored_strategy_on_two_cpus(tmp_path):
    """A fresh process: logical devices must be set before TF starts."""
    import subprocess
    import sys

    script = f"""
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from collab_keras.models import (TransformerNMTBackbone,
    TransformerNMTSeq2SeqLM, TransformerNMTSeq2SeqLMPreprocessor,
    TransformerNMTTokenizer)
sources, targets = {SOURCES!r}, {TARGETS!r}
tokenizer = TransformerNMTTokenizer.train(sources + targets, 100)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    backbone = TransformerNMTBackbone.from_architecture(
        "transformer_tiny", vocabulary_size=100,
        attention="collaborative", shared_key_dim=16)
    task = TransformerNMTSeq2SeqLM(backbone,
        TransformerNMTSeq2SeqLMPreprocessor(tokenizer, 16, 12))
    task.compile(optimizer=keras.optimizers.Adam(1e-3))
history = task.fit({{"encoder_text": sources * 4, "decoder_text": targets * 4}},
                   batch_size=4, epochs=1, verbose=0)
assert strategy.num_replicas_in_sync == 2
loss = history.history["loss"][-1]
assert np.isfinite(loss), loss
print("LOSS", loss)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": root},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOSS" in result.stdout
