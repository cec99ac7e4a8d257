"""The configuration of a run: every setting, written as `config.json`.

`collab-keras train --config RUN_DIR/config.json` repeats the run (or resumes
it, in the same output directory). Relative paths in a config file are read
relative to the file's folder; `config.json` records the run folder as "."
(the folder it lies in) and every other path absolute, so a run folder can be
moved and resumed from anywhere. Every number has a valid range, checked when
a `RunConfig` is made (see docs/training.md).
"""

import dataclasses
import json
import os

from collab_keras.argument_checks import check_bool
from collab_keras.argument_checks import check_float
from collab_keras.argument_checks import check_integer
from collab_keras.training import data

ATTENTIONS = ("concatenate", "collaborative")
# What a pretrained preset converted to collaborative heads is calibrated on
# (see `RunConfig.calibration`).
CALIBRATIONS = ("auto", "none", "synthetic", "train")
STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu", "data-parallel", "model-parallel")
# The settings that name files or folders, read relative to a config file's folder.
PATHS = ("output_dir", "vocabulary_file", "data_dir", "data")
# Upper bounds of the sizes: beyond them a run cannot fit in memory (or a
# typo such as an extra zero is far more likely than intent).
MAX_VOCABULARY_SIZE = 1_000_000
MAX_SEQUENCE_LENGTH = 8192


@dataclasses.dataclass
class RunConfig:
    """One training run.

    Args:
        task: `nmt`, `bert-mlm`, `bert-classify` or `vit`.
        output_dir: where everything the run writes goes.
        preset: an architecture name (random init) or a pretrained preset.
        overrides: architecture arguments replaced (`--set KEY=VALUE`).
        attention: `concatenate` or `collaborative`.
        shared_key_dim: total query/key width D̃_k (None: the preset's): the
            shared width of collaborative heads, or with `concatenate` the
            summed query/key width of the heads (the paper's baseline at a
            reduced key size: `shared_key_dim // num_heads` per head, values
            unchanged; a multiple of the architecture's `num_heads`).
        calibration: what the conversion of a pretrained (concatenated)
            preset to collaborative heads fits the attention logits on:
            `"auto"` (the zoo's default: the backbone's synthetic inputs
            below the full width, the weights alone at it), `"none"` (the
            weights alone: tensor-only), `"synthetic"` (the backbone's
            random token sequences) or `"train"` (the first
            `calibration_examples` training examples: data-aware). Anything
            but `"auto"` needs a run that converts (a pretrained preset and
            `attention="collaborative"`).
        calibration_examples: training examples of `calibration="train"`, >= 1.
        dataset: a dataset name of `data.datasets_for(task)`.
        data_dir: tensorflow-datasets' data folder.
        source, target: bible.db version codes (translation and MLM on `bible`).
        max_train_examples: use only the first N training examples.
        vocabulary_file: an existing vocabulary (one token a line) to use
            instead of training one; copied into the run folder.
        vocabulary_size: WordPiece vocabulary size (architecture presets),
            in [8, 1_000_000].
        sequence_length: token length of every text input, in [2, 8192].
        batch_size: global batch size (divided across replicas).
        steps: optimizer steps in the whole run.
        checkpoint_every: optimizer steps between checkpoints (one Keras epoch).
        learning_rate: peak learning rate of the warmup + cosine decay
            schedule, finite and > 0.
        warmup_steps: linear warmup steps, in [0, steps).
        weight_decay: AdamW weight decay, finite and >= 0.
        clip_norm: clip each gradient update to this global norm (0: off;
            finite and >= 0).
            Under tf.distribute Keras clips every replica's gradients before
            they are summed, so a clipped step differs from one device's.
        label_smoothing: `nmt` only: the weight, in [0, 1), moved from the
            reference token to a uniform distribution over the vocabulary
            in the training loss (Szegedy et al. 2016; 0.1 in Vaswani et al.
            2017). 0: the task's plain cross-entropy.
        augment_shift: `vit` from `data` only: shift every training image by
            a random whole number of pixels in [-N, N] along each axis (zero
            fill), drawn per image from the seed and the step (so a resumed
            run sees the same images); 0: off. >= 0.
        early_stopping_patience: None (off), or stop training when this many
            checkpoints in a row bring no improvement of the validation
            score (`checkpoint.EARLY_STOPPING`: accuracy for the classification tasks,
            loss for the others), as `keras.callbacks.EarlyStopping(patience=
            ..., restore_best_weights=True)` does with one Keras epoch per
            checkpoint; the run then ends with the weights of its best
            checkpoint. >= 0.
        mixed_precision: train in `mixed_bfloat16`.
        jit_compile: None (Keras' "auto"), True or False.
        strategy: see `distribution.STRATEGIES`.
        model_parallel: model-axis size for `--strategy model-parallel` (JAX).
        cpu_devices: split the host CPU into this many logical devices
            (TensorFlow; e.g. 2 to try `mirrored` without GPUs).
        seed: seeds weights, dropout and the data order.
        deterministic: TensorFlow op determinism (bitwise-reproducible runs).
        data: a folder written by `collab-keras prepare` (see prepared.py):
            train from its arrays instead of tf.data, without TensorFlow on
            the JAX and torch backends. Its options must be this run's.
        eval_examples: test examples decoded / evaluated at the end.
        beam_width: beams of the NMT beam-search decodes.
        export: export the trained model for TF Serving to `<output_dir>/export`.
        peak_tflops: the peak TFLOP/s of one device, for the model FLOP
            utilization (None: that of an H100-class GPU in bfloat16 when the
            run trains on GPUs, else no MFU); finite and > 0.
    """

    task: str
    output_dir: str
    preset: str = None
    overrides: dict = dataclasses.field(default_factory=dict)
    attention: str = "collaborative"
    shared_key_dim: int = None
    calibration: str = "auto"
    calibration_examples: int = 64
    dataset: str = None
    data_dir: str = None
    source: str = None
    target: str = None
    max_train_examples: int = None
    vocabulary_file: str = None
    vocabulary_size: int = 8000
    sequence_length: int = 64
    batch_size: int = 32
    steps: int = 1000
    checkpoint_every: int = 100
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    augment_shift: int = 0
    early_stopping_patience: int = None
    mixed_precision: bool = False
    jit_compile: bool = None
    strategy: str = "auto"
    model_parallel: int = 2
    cpu_devices: int = None
    seed: int = 0
    deterministic: bool = False
    data: str = None
    eval_examples: int = 200
    beam_width: int = 4
    export: bool = True
    peak_tflops: float = None

    def __post_init__(self):
        def positive(name, minimum=1, allow_none=False):
            setattr(self, name, check_integer(name, getattr(self, name), minimum, allow_none))

        if self.task not in data.TASKS:
            raise ValueError(f"`task` must be one of {data.TASKS}. Received: task={self.task!r}")
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(
                "`output_dir` must name a folder (an empty name would be the "
                f"current folder). Received: output_dir={self.output_dir!r}"
            )
        for name in PATHS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                    raise ValueError(
                        f"`{name}` must be a path or None. Received: {name}={value!r}"
                    )
                setattr(self, name, os.path.abspath(os.fspath(value)))
        if not isinstance(self.overrides, dict):
            raise ValueError(
                "`overrides` must be a dict of architecture arguments. "
                f"Received: overrides={self.overrides!r}"
            )
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"`attention` must be one of {ATTENTIONS}. Received: attention={self.attention!r}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"`calibration` must be one of {CALIBRATIONS}. "
                f"Received: calibration={self.calibration!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={self.strategy!r}"
            )
        if self.dataset is not None and self.dataset not in data.datasets_for(self.task):
            raise ValueError(
                f"`dataset` of task {self.task!r} must be one of "
                f"{data.datasets_for(self.task)}. Received: dataset={self.dataset!r}"
            )
        for name in ("batch_size", "steps", "checkpoint_every",
                     "eval_examples", "beam_width", "model_parallel"):
            positive(name)
        positive("warmup_steps", 0)
        positive("seed", 0)
        positive("vocabulary_size", 8)
        positive("sequence_length", 2)
        for name, limit in (("vocabulary_size", MAX_VOCABULARY_SIZE),
                            ("sequence_length", MAX_SEQUENCE_LENGTH)):
            if getattr(self, name) > limit:
                raise ValueError(
                    f"`{name}` must be at most {limit:_} (a model that large does "
                    f"not fit in memory). Received: {name}={getattr(self, name)}"
                )
        positive("shared_key_dim", allow_none=True)
        if self.attention == "concatenate" and self.shared_key_dim is not None:
            self._check_key_size_splits()
        positive("cpu_devices", allow_none=True)
        positive("calibration_examples")
        positive("early_stopping_patience", 0, allow_none=True)
        if self.calibration != "auto":
            self._check_conversion()
        positive("augment_shift", 0)
        if self.augment_shift and (self.task != "vit" or self.data is None):
            raise ValueError(
                "`augment_shift` shifts the images of a `vit` run from prepared data "
                f"(`--data`). Received: augment_shift={self.augment_shift}, "
                f"task={self.task!r}, data={self.data!r}"
            )
        positive("max_train_examples", allow_none=True)
        for name in ("mixed_precision", "deterministic", "export"):
            setattr(self, name, check_bool(name, getattr(self, name)))
        self.jit_compile = check_bool("jit_compile", self.jit_compile, allow_none=True)
        if self.vocabulary_file is not None and not os.path.isfile(self.vocabulary_file):
            raise ValueError(
                "`vocabulary_file` must be an existing file. "
                f"Received: vocabulary_file={self.vocabulary_file!r}"
            )
        if self.steps % self.checkpoint_every:
            raise ValueError(
                "`steps` must be a multiple of `checkpoint_every`. Received: "
                f"steps={self.steps}, checkpoint_every={self.checkpoint_every}"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(
                "`warmup_steps` must be fewer than `steps` (the schedule decays "
                f"after the warmup). Received: warmup_steps={self.warmup_steps}, "
                f"steps={self.steps}"
            )
        self.learning_rate = check_float("learning_rate", self.learning_rate, strict=True)
        self.weight_decay = check_float("weight_decay", self.weight_decay)
        self.clip_norm = check_float("clip_norm", self.clip_norm)
        self.label_smoothing = check_float("label_smoothing", self.label_smoothing, below=1.0)
        if self.label_smoothing and self.task != "nmt":
            raise ValueError(
                "`label_smoothing` applies to the `nmt` task's token loss only. "
                f"Received: label_smoothing={self.label_smoothing}, task={self.task!r}"
            )
        self.peak_tflops = check_float("peak_tflops", self.peak_tflops, allow_none=True,
                                       strict=True)

    def _check_key_size_splits(self):
        """Concatenated heads split `shared_key_dim` across the heads: with an
        architecture preset, check it is a multiple of `num_heads` now rather
        than after the data and the vocabulary (a pretrained preset is
        checked when the model is built)."""
        from collab_keras.training import tasks

        backbone_cls, _ = tasks._families()[self.task]
        architecture = backbone_cls.architectures.get(
            self.preset or tasks.DEFAULT_ARCHITECTURE[self.task]
        )
        if architecture is None:
            return
        num_heads = self.overrides.get("num_heads", architecture["num_heads"])
        if isinstance(num_heads, int) and num_heads > 0 and self.shared_key_dim % num_heads:
            raise ValueError(
                "With attention='concatenate', `shared_key_dim` (the total "
                "query/key size of the concatenated heads) must be a multiple "
                f"of `num_heads`. Received: shared_key_dim={self.shared_key_dim}, "
                f"num_heads={num_heads}"
            )

    def _check_conversion(self):
        """A `calibration` other than "auto" needs a run that converts a
        pretrained preset to collaborative heads."""
        from collab_keras.training import tasks

        if self.attention != "collaborative" or tasks.is_architecture(self.task, self.preset):
            raise ValueError(
                "`calibration` applies to the conversion of a pretrained preset "
                "to collaborative heads (a pretrained `preset` and "
                "attention='collaborative'). Received: "
                f"calibration={self.calibration!r}, preset={self.preset!r}, "
                f"attention={self.attention!r}"
            )

    def to_json(self):
        """The config as `config.json` text: the run folder as "." (the
        folder the file lies in), every other path absolute."""
        values = dataclasses.asdict(self)
        values["output_dir"] = "."
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text, base_dir=None, **changes):
        """The config of a config file's `text`.

        Args:
            text: the file's JSON text.
            base_dir: the file's folder: relative paths in it (`output_dir`,
                `vocabulary_file`, `data_dir`, a preset folder) are read
                relative to it. None: the current folder.
            **changes: settings replaced after reading.
        """
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ValueError(f"The run config is not JSON ({error}). Received: {text[:80]!r}") from None
        if not isinstance(values, dict):
            raise ValueError(f"The run config must be a JSON object. Received: {text[:80]!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"Unknown keys in the run config: {unknown}. Received: {unknown}")
        values.update(changes)
        missing = sorted(
            n for n, f in fields.items()
            if n not in values and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(
                f"The run config lacks the required keys {missing}. "
                f"Received: keys={sorted(values)}"
            )
        if base_dir is not None:
            def resolve(path):
                return os.path.join(base_dir, path) if isinstance(path, str) and path else path

            for name in PATHS:
                if name not in changes:
                    values[name] = resolve(values.get(name))
            preset = values.get("preset")
            if isinstance(preset, str) and os.path.isdir(resolve(preset)):
                values["preset"] = os.path.abspath(resolve(preset))
        return cls(**values)

    def data_options(self):
        """The settings that decide a task's token arrays (what `collab-keras
        prepare` records), defaults filled in."""
        from collab_keras.training import bible
        from collab_keras.training import tasks

        dataset = self.dataset or data.OFFLINE[self.task]
        bible_codes = dataset == "bible"
        return {
            "task": self.task,
            "preset": self.preset or tasks.DEFAULT_ARCHITECTURE[self.task],
            "dataset": dataset,
            "source": (self.source or bible.DEFAULT_SOURCE) if bible_codes else None,
            "target": (self.target or bible.DEFAULT_TARGET) if bible_codes else None,
            "max_train_examples": self.max_train_examples,
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
        }

    def same_run(self, other):
        """Whether `other` trains the same model the same way (resumable)."""
        ignore = {"output_dir", "eval_examples", "beam_width", "export", "peak_tflops"}
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: v for k, v in mine.items() if k not in ignore} == {
            k: v for k, v in theirs.items() if k not in ignore
        }
