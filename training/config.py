"""The configuration of a run: every setting, written as `config.json`.

`collab-keras train --config RUN_DIR/config.json` repeats the run (or resumes
it, in the same output directory).
"""

import dataclasses
import json
import os

from collab_keras.argument_checks import check_integer
from collab_keras.training import data

ATTENTIONS = ("concatenate", "collaborative")
STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu", "data-parallel", "model-parallel")


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
        dataset: a dataset name of `data.datasets_for(task)`.
        data_dir: tensorflow-datasets' data folder.
        source, target: bible.db version codes (translation and MLM on `bible`).
        max_train_examples: use only the first N training examples.
        vocabulary_file: an existing vocabulary (one token a line) to use
            instead of training one; copied into the run folder.
        vocabulary_size: WordPiece vocabulary size (architecture presets).
        sequence_length: token length of every text input.
        batch_size: global batch size (divided across replicas).
        steps: optimizer steps in the whole run.
        checkpoint_every: optimizer steps between checkpoints (one Keras epoch).
        learning_rate: peak learning rate of the warmup + cosine decay schedule.
        warmup_steps: linear warmup steps.
        weight_decay: AdamW weight decay.
        clip_norm: clip each gradient update to this global norm (0: off).
            Under tf.distribute Keras clips every replica's gradients before
            they are summed, so a clipped step differs from one device's.
        mixed_precision: train in `mixed_bfloat16`.
        jit_compile: None (Keras' "auto"), True or False.
        strategy: see `distribution.STRATEGIES`.
        model_parallel: model-axis size for `--strategy model-parallel` (JAX).
        cpu_devices: split the host CPU into this many logical devices
            (TensorFlow; e.g. 2 to try `mirrored` without GPUs).
        seed: seeds weights, dropout and the data order.
        deterministic: TensorFlow op determinism (bitwise-reproducible runs).
        eval_examples: test examples decoded / evaluated at the end.
        beam_width: beams of the NMT beam-search decodes.
        export: export the trained model for TF Serving to `<output_dir>/export`.
    """

    task: str
    output_dir: str
    preset: str = None
    overrides: dict = dataclasses.field(default_factory=dict)
    attention: str = "collaborative"
    shared_key_dim: int = None
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
    mixed_precision: bool = False
    jit_compile: bool = None
    strategy: str = "auto"
    model_parallel: int = 2
    cpu_devices: int = None
    seed: int = 0
    deterministic: bool = False
    eval_examples: int = 200
    beam_width: int = 4
    export: bool = True

    def __post_init__(self):
        def positive(name, minimum=1, allow_none=False):
            setattr(self, name, check_integer(name, getattr(self, name), minimum, allow_none))

        if self.task not in data.TASKS:
            raise ValueError(f"`task` must be one of {data.TASKS}. Received: task={self.task!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"`attention` must be one of {ATTENTIONS}. Received: attention={self.attention!r}"
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
        for name in ("batch_size", "steps", "checkpoint_every", "sequence_length",
                     "eval_examples", "beam_width", "model_parallel"):
            positive(name)
        positive("warmup_steps", 0)
        positive("seed", 0)
        positive("shared_key_dim", allow_none=True)
        if self.attention == "concatenate" and self.shared_key_dim is not None:
            self._check_key_size_splits()
        positive("cpu_devices", allow_none=True)
        positive("max_train_examples", allow_none=True)
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
        if not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}"
            )

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

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text, **changes):
        values = json.loads(text)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown keys in the run config: {unknown}. Received: {unknown}")
        values.update(changes)
        return cls(**values)

    def same_run(self, other):
        """Whether `other` trains the same model the same way (resumable)."""
        ignore = {"output_dir", "eval_examples", "beam_width", "export"}
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: v for k, v in mine.items() if k not in ignore} == {
            k: v for k, v in theirs.items() if k not in ignore
        }
