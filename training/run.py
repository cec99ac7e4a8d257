"""One training run: data, vocabulary, model, distribution, fit, evaluation.

Everything a run writes goes to `config.output_dir`:

    config.json            the run's settings (reproduces it)
    vocabulary.txt         the WordPiece vocabulary trained on the run's data
    checkpoints/           resumable checkpoints (see checkpoint.py)
    logs/                  TensorBoard logs
    model/                 the trained task, `save_to_preset` format
    export/<version>/      the SavedModel for TF Serving (TensorFlow backend)
    metrics.json           history and final scores
    learning_curves.png    the history, plotted
    learning_curves.jsonl  the history, one JSON object a line (and .csv): per
                           checkpoint the step, the training seconds so far,
                           the training and validation scores
    test_translations.jsonl  nmt: every decoded test verse (source, reference,
                           translation), one JSON object a line

    vocabulary.json        the vocabulary's fingerprint (see vocabulary.py)

A directory holding the same run's config is resumed from its latest
checkpoint; one holding another run or other files is refused, and so are an
empty name, `/`, the home folder and the current folder (unless it holds this
same run). Every argument is checked (the data found, the vocabulary read,
the model built) before the first byte is written: a refused command leaves
nothing behind. A run writes only inside its folder, and removes only what
it wrote there (old checkpoints, temporary files of an interrupted write).

TensorFlow is imported only where it is used: tf.data (a run without
`--data`), the TensorFlow backend (tf.distribute, op determinism, the
SavedModel export). A run with `--data` (prepared.py) on the JAX or torch
backend trains, evaluates, decodes and checkpoints without it.
"""

import dataclasses
import errno
import functools
import json
import os
import time

import keras
import numpy as np

from collab_keras.training import checkpoint
from collab_keras.training import data
from collab_keras.training import distribution
from collab_keras.training import evaluation
from collab_keras.training import flops
from collab_keras.training import prepared as prepared_data
from collab_keras.training import tasks
from collab_keras.training import vocabulary as vocabularies
from collab_keras.training.config import RunConfig


def check_output_dir(config):
    """Checks that the run may write in `config.output_dir`; writes nothing.

    Returns:
        True when the folder holds this same run (resume), False when it is
        new (missing or empty).
    """
    path = config.output_dir
    real = os.path.realpath(path)
    if real in {os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))}:
        raise ValueError(
            "`output_dir` must not be / or the home folder: a run writes its "
            f"files and folders at the top of it. Received: output_dir={path!r}"
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`output_dir` is a file. Received: output_dir={path!r}")
    saved = os.path.join(path, "config.json")
    if os.path.isfile(saved):
        try:
            with open(saved, encoding="utf-8") as file:
                previous = RunConfig.from_json(file.read(), path, output_dir=path)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{path} holds a config.json that is not a valid run config "
                f"({error}); nothing there is overwritten. Choose a new "
                f"--output-dir. Received: output_dir={path!r}"
            ) from None
        if not config.same_run(previous):
            mine, theirs = dataclasses.asdict(config), dataclasses.asdict(previous)
            changed = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
            changed.pop("output_dir", None)
            raise ValueError(
                f"{path} holds another run (changed settings, as (saved, new): "
                f"{changed}). Resume it with `collab-keras train --config {saved}` "
                f"or choose a new --output-dir. Received: output_dir={path!r}"
            )
        return True
    if real == os.path.realpath(os.getcwd()):
        raise ValueError(
            "`output_dir` must not be the current folder (a run writes its files "
            "and folders at the top of it). Choose a new folder. "
            f"Received: output_dir={path!r}"
        )
    # workers/ is where the other workers of this multi-worker run write.
    if os.path.isdir(path) and set(os.listdir(path)) - {"workers"}:
        raise ValueError(
            f"{path} is not empty and holds no collab-keras run (no config.json); "
            "nothing there is overwritten. Choose a new or empty --output-dir. "
            f"Received: output_dir={path!r}"
        )
    return False


def claim_output_dir(config, resume):
    """Creates the run folder and writes `config.json` (a new run), or
    removes what an interrupted write left there (a resumed run)."""
    path = config.output_dir
    os.makedirs(path, exist_ok=True)
    if not resume:
        checkpoint.atomic_write_text(os.path.join(path, "config.json"), config.to_json())
    for folder in (path, os.path.join(path, "checkpoints"), os.path.join(path, "export")):
        checkpoint.remove_temporaries(folder)


def describe_os_error(error):
    """One line for an OSError of a run: the path, the cause, what to do."""
    where = error.filename or "a file"
    advice = {
        errno.ENOSPC: "the disk is full; free some space and rerun the same "
                      "command to resume from the last checkpoint",
        errno.EROFS: "the file system is read-only; choose another --output-dir",
        errno.EACCES: "permission denied; choose a folder you can write, or "
                      "change its permissions",
        errno.EPERM: "permission denied; choose a folder you can write",
    }.get(error.errno)
    if advice is None:
        return f"{where}: {error.strerror or error}"
    return f"cannot write {where}: {error.strerror or error} ({advice})"


def _optimizer(config):
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if config.warmup_steps else config.learning_rate,
        decay_steps=config.steps - config.warmup_steps,
        warmup_target=config.learning_rate if config.warmup_steps else None,
        warmup_steps=config.warmup_steps,
        alpha=0.1,
    )
    return keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        global_clipnorm=config.clip_norm or None,
    )


@keras.saving.register_keras_serializable(package="collab_keras")
class LabelSmoothedCrossentropy(keras.losses.Loss):
    """Token cross-entropy from logits with label smoothing.

    Keras' `SparseCategoricalCrossentropy` has no label smoothing: this is
    `keras.losses.categorical_crossentropy(..., label_smoothing=...)` on the
    one-hot of the sparse labels, the target `(1 - label_smoothing)` on the
    reference token plus `label_smoothing / vocabulary` on every token.
    Sample weights (the padding mask) weigh the tokens as in the plain loss.

    Args:
        label_smoothing: float in [0, 1).
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `name`, `dtype`).
    """

    def __init__(self, label_smoothing=0.1, **kwargs):
        kwargs.setdefault("name", "label_smoothed_crossentropy")
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        # y_true: (batch, length) token ids; y_pred: (batch, length, vocabulary) logits.
        one_hot = keras.ops.one_hot(
            keras.ops.cast(y_true, "int32"), keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype
        )
        return keras.losses.categorical_crossentropy(  # (batch, length)
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


TOKEN_TASKS = ("nmt", "bert-mlm")


def _loss(config):
    """The `loss` argument of the task's `compile`: for the token tasks the
    cross-entropy averaged over the real tokens (`mean_with_sample_weight`:
    the sum over the tokens the padding or prediction mask keeps, divided by
    their count), label-smoothed where asked; for the others the task's own
    loss (`{}`). keras-hub's default divides by every position, padding
    included: then the loss and the perplexity fall as batches hold more
    padding, and are not comparable across batch sizes."""
    if config.task not in TOKEN_TASKS:
        return {}
    if config.label_smoothing:
        return {"loss": LabelSmoothedCrossentropy(
            config.label_smoothing, reduction="mean_with_sample_weight")}
    return {"loss": keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")}


def _sample_arrays(task_model, examples, count=512):
    """The preprocessed arrays of the first `count` examples of a tf.data
    split, named as prepared.py names them."""
    batch = next(iter(examples.take(count).batch(count)))
    return prepared_data.pack(*task_model.preprocessor(batch))


IN_MEMORY_EXAMPLES = 1_000_000


def training_batches(examples, seed, batch_size, skip=0):
    """Endless shuffled batches of `examples`, the same order on every run.

    A corpus of known size up to `IN_MEMORY_EXAMPLES` is held in memory and
    every pass over it is ordered by `tf.random.experimental.index_shuffle`
    seeded with (seed, pass): a stateless permutation, so the order is the
    same whatever the strategy and process (tf.distribute rewrites a
    `Dataset.shuffle` with fresh seeds), and a resumed run starts at batch
    `skip` without reading the batches before it. Larger or unsized corpora
    (big tfds sets) use `Dataset.shuffle` with a 20,000-example buffer.
    """
    import tensorflow as tf

    size = int(examples.cardinality())
    if not 0 < size <= IN_MEMORY_EXAMPLES:
        shuffled = examples.shuffle(20000, seed=seed, reshuffle_each_iteration=True)
        return shuffled.repeat().batch(batch_size, drop_remainder=True).skip(skip)
    table = examples.batch(size).get_single_element()  # every example, (size, ...)

    def gather(positions):  # (batch,) int64 positions in the endless stream
        passes, offsets = positions // size, positions % size
        seeds = tf.stack([tf.fill(tf.shape(passes), tf.constant(seed, tf.int64)),
                          passes, tf.fill(tf.shape(passes), tf.constant(0x5EED, tf.int64))],
                         axis=-1)
        index = tf.raw_ops.RandomIndexShuffle(  # a seed per position: (batch, 3)
            index=offsets, seed=seeds, max_index=tf.constant(size - 1, tf.int64)
        )
        return tf.nest.map_structure(lambda t: tf.gather(t, index), table)

    positions = tf.data.Dataset.range(skip * batch_size, 2**62)
    return positions.batch(batch_size, drop_remainder=True).map(gather)


def uses_tensorflow(config):
    """Whether the run needs TensorFlow: tf.data (no `--data`) or the
    TensorFlow backend."""
    return config.data is None or keras.backend.backend() == "tensorflow"


def train(config):
    """Runs (or resumes) the training run `config`; returns its metrics dict.

    The process-wide settings the run asks for, TensorFlow's op determinism
    and the `mixed_bfloat16` policy, hold while it runs and are put back as
    they were when it ends: later work in the same process (a Keras model
    compiled with `jit_compile=True`, which op determinism silently turns
    off) is not affected.
    """
    determinism = True
    if uses_tensorflow(config):
        data.require_tensorflow(
            "A run without --data (tf.data)" if config.data is None else "The TensorFlow backend",
            f"data={config.data!r}, KERAS_BACKEND={keras.backend.backend()!r}")
        # TensorFlow has no public way to ask for or to turn off op determinism.
        from tensorflow.python.framework import config as tf_config

        determinism = tf_config.is_op_determinism_enabled()
    elif config.deterministic:
        raise ValueError(
            "`--deterministic` is TensorFlow's op determinism; a run from "
            f"`--data` on the {keras.backend.backend()} backend does not use "
            f"TensorFlow. Received: deterministic=True, data={config.data!r}"
        )
    policy = keras.mixed_precision.global_policy()
    try:
        return _train(config)
    finally:
        if not determinism:
            tf_config.disable_op_determinism()
        keras.mixed_precision.set_global_policy(policy)


def _train(config):
    backend = keras.backend.backend()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    strategy = None
    if backend == "tensorflow" and config.cpu_devices:
        import tensorflow as tf

        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices
        )
    if backend == "tensorflow":
        strategy = distribution.tf_strategy(config.strategy)
    elif config.strategy in distribution.TF_STRATEGIES[2:]:
        raise ValueError(
            f"`--strategy {config.strategy}` is tf.distribute: it needs the "
            f"TensorFlow backend (KERAS_BACKEND={backend}). Received: "
            f"strategy={config.strategy!r}"
        )
    chief = strategy is None or distribution.is_chief(strategy)
    if chief:
        own_dir = config.output_dir
        resume = check_output_dir(config)
    else:  # the chief checks the folder; the others write under workers/
        resume = False
        own_dir = os.path.join(config.output_dir, "workers", str(distribution.worker_id(strategy)))

    # Everything the arguments decide is checked (data, vocabulary, model)
    # before the first byte is written.
    tasks.check_preset(config.task, config.preset)
    load = lambda split: data.load(  # noqa: E731
        config.task, split, config.dataset, config.data_dir, config.source, config.target
    )
    prepared = train_examples = None
    if config.data is not None:
        prepared = prepared_data.load(config.data, config.data_options())
    else:
        train_examples = load("train")
        if config.max_train_examples:
            train_examples = train_examples.take(config.max_train_examples)
    num_classes = (
        data.num_classes(config.task, config.dataset)
        if config.task in ("bert-classify", "vit")
        else None
    )
    vocabulary = None
    vocabulary_path = os.path.join(own_dir, "vocabulary.txt")
    if config.task != "vit" and tasks.is_architecture(config.task, config.preset):
        vocabulary = vocabularies.load_saved(vocabulary_path)
        given = None if config.vocabulary_file is None else vocabularies.read(
            config.vocabulary_file)
        if prepared is not None and given is not None and given != prepared.vocabulary:
            raise ValueError(
                f"`vocabulary_file` is not the vocabulary of the prepared data "
                f"{config.data}. Received: vocabulary_file={config.vocabulary_file!r}"
            )
        if prepared is not None:
            given = prepared.vocabulary
        if vocabulary is None:
            vocabulary = given or tasks.new_vocabulary(config, train_examples)
        elif given is not None and given != vocabulary:
            raise ValueError(
                f"`vocabulary_file` is not the vocabulary the run {config.output_dir} "
                f"uses ({vocabulary_path}). Received: vocabulary="
                f"{config.vocabulary_file or config.data!r}"
            )

    calibration = None
    if config.calibration == "train":
        calibration = _calibration_examples(config, prepared, train_examples)

    def build():
        keras.utils.set_random_seed(config.seed)
        return tasks.build(config, vocabulary, num_classes, calibration)

    if backend == "jax":
        dist = distribution.jax_distribution(config.strategy, build, config.model_parallel)
        keras.distribution.set_distribution(dist)
    replicas = distribution.num_replicas(strategy)
    if config.batch_size % replicas:
        raise ValueError(
            f"`batch_size` must divide evenly across the {replicas} replicas. "
            f"Received: batch_size={config.batch_size}"
        )

    with distribution.scope(strategy):
        task_model = build()
        task_model.compile(optimizer=_optimizer(config), jit_compile=(
            "auto" if config.jit_compile is None else config.jit_compile), **_loss(config))
        fingerprint = {
            "task": config.task,
            "vocabulary": None if vocabulary is None else vocabularies.fingerprint(vocabulary),
            "parameters": int(task_model.count_params()),
        }
        distribution.work_around_multi_worker_fit(task_model, strategy)
        checkpoints = os.path.join(own_dir, "checkpoints")
        if chief:
            claim_output_dir(config, resume)
        else:
            os.makedirs(own_dir, exist_ok=True)
        if vocabulary is not None and not os.path.exists(vocabulary_path):
            vocabularies.save(vocabulary_path, vocabulary)
        step, history = checkpoint.restore(task_model, checkpoints, fingerprint)
    if resume and step:
        print(f"Resuming {config.output_dir} from step {step} of {config.steps}.")

    if prepared is None:
        train_batches = training_batches(train_examples, config.seed, config.batch_size, step)
        validation = load("validation").take(config.eval_examples).batch(config.batch_size)
        fit, evaluate = task_model.fit, task_model.evaluate
    else:
        train_batches = prepared_data.Batches(
            prepared.splits["train"], config.batch_size, config.seed, config.steps, step,
            shift=config.augment_shift)
        validation = _evaluation_batches(prepared, "validation", config)
        # The batches are the preprocessor's outputs: keras.Model's own fit
        # and evaluate take them (keras-hub's would preprocess them again,
        # through tf.data).
        fit = functools.partial(keras.Model.fit, task_model)
        evaluate = functools.partial(keras.Model.evaluate, task_model)
    early = None
    if config.early_stopping_patience is not None:
        early = (*checkpoint.EARLY_STOPPING[config.task], config.early_stopping_patience)
    checkpointer = checkpoint.Checkpointer(
        checkpoints, config.checkpoint_every, fingerprint, history, early
    )
    timer = evaluation.StepTimer()
    callbacks = [checkpointer, timer]
    if chief:
        board = evaluation.tensorboard(os.path.join(own_dir, "logs"), uses_tensorflow(config))
        callbacks += [board] if board is not None else []
    started = time.perf_counter()
    # A finished run (at its last step, or stopped early) is only evaluated again.
    done = step >= config.steps or (
        early is not None and checkpoint.early_stopping(history, *early)[1] is not None)
    if not done:
        fit(
            train_batches,
            epochs=config.steps // config.checkpoint_every,
            steps_per_epoch=config.checkpoint_every,
            initial_epoch=step // config.checkpoint_every,
            validation_data=validation,
            callbacks=callbacks,
            shuffle=False,  # train_batches is shuffled, seeded
            verbose=int(os.environ.get("COLLAB_KERAS_VERBOSE", "1")) if chief else 0,
        )
    seconds = time.perf_counter() - started
    if checkpointer.diverged_at is not None:
        kept = history[-1]["step"] if history else None
        raise RuntimeError(
            f"The training loss is not finite (NaN or inf) at step "
            f"{checkpointer.diverged_at}; training stopped and nothing was saved "
            "from the diverged weights. "
            + (f"The last good checkpoint, step {kept}, is kept in {checkpoints}. "
               if kept else "No checkpoint was written yet. ")
            + "Try a lower --learning-rate or a --clip-norm, in a new --output-dir. "
            f"Received: learning_rate={config.learning_rate}"
        )
    trained_steps = (history[-1]["step"] if history else step) - step
    stopping = None
    if early is not None and history:
        # As keras.callbacks.EarlyStopping(restore_best_weights=True): the
        # run ends with the weights of its best checkpoint.
        best, stopped = checkpoint.early_stopping(history, *early)
        stopping = {"monitor": early[0], "patience": early[2], "best": history[best][early[0]],
                    "best_step": history[best]["step"],
                    "stopped_step": None if stopped is None else history[stopped]["step"]}
        if stopping["best_step"] != history[-1]["step"]:
            with distribution.scope(strategy):
                checkpoint.restore_weights(task_model, checkpoints, stopping["best_step"])

    if prepared is None:
        test = load("test").take(config.eval_examples)
        scores = evaluate(test.batch(config.batch_size), verbose=0, return_dict=True)
    else:
        scores = evaluate(_evaluation_batches(prepared, "test", config), verbose=0,
                          return_dict=True)
    metrics = {"test_" + k: float(v) for k, v in scores.items()}
    metrics.update(
        parameters=fingerprint["parameters"],
        replicas=replicas,
        train_seconds=round(seconds, 2),
        steps_per_second=round(trained_steps / seconds, 3) if trained_steps else None,
        examples_per_second=round(trained_steps * config.batch_size / seconds, 1)
        if trained_steps else None,
        step_seconds=timer.median(),
    )
    if stopping is not None:
        metrics["early_stopping"] = stopping
    if config.task == "bert-mlm":
        metrics["test_perplexity"] = evaluation.perplexity(metrics["test_loss"])
    if config.task == "nmt":
        metrics["tokens_per_example"] = prepared_data.mean_tokens(
            prepared.splits["train"] if prepared is not None
            else _sample_arrays(task_model, train_examples))
        if trained_steps:
            metrics["tokens_per_second"] = round(
                metrics["examples_per_second"] * metrics["tokens_per_example"], 1
            )
            metrics.update(_utilization(config, task_model, train_batches, timer, replicas))
        if prepared is None:
            sources, references = data.text_pairs(test)
        else:
            sources, references = prepared.texts("test", config.eval_examples)
        hypotheses = evaluation.beam_decode(task_model, sources, config.beam_width)
        metrics.update(evaluation.translation_scores(hypotheses, references))
        translations = [{"source": s, "reference": r, "translation": h}
                        for s, r, h in zip(sources, references, hypotheses)]
        metrics["examples"] = translations[:5]

    if not trained_steps:  # a finished run again: keep the timing it recorded
        metrics.update(_recorded_timing(own_dir))
    if chief:
        task_model.save_to_preset(os.path.join(own_dir, "model"))
        if config.export and backend == "tensorflow":
            from collab_keras.training.export import export_saved_model

            metrics["export"] = export_saved_model(
                task_model, os.path.join(own_dir, "export"), num_beams=config.beam_width
            )
        checkpoint.atomic_write_json(
            os.path.join(own_dir, "metrics.json"), {"final": metrics, "history": history}
        )
        evaluation.plot_learning_curves(
            history,
            os.path.join(own_dir, "learning_curves.png"),
            f"{config.task} ({config.attention})",
        )
        evaluation.write_learning_curves(history, os.path.join(own_dir, "learning_curves"))
        if config.task == "nmt":  # every decoded test verse, for paired significance tests
            checkpoint.atomic_write_text(
                os.path.join(own_dir, "test_translations.jsonl"),
                "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in translations),
            )
    return metrics


def _calibration_examples(config, prepared, train_examples):
    """The first `calibration_examples` training examples, for a conversion
    with `calibration="train"`: the backbone's inputs from prepared arrays
    (padding after the longest cut), else the raw examples of tf.data
    (strings or images, which the task's preprocessor turns into them)."""
    from collab_keras.models.zoo_model import cut_padding

    count = config.calibration_examples
    if prepared is not None:
        train = prepared.splits["train"]
        if "x" in train:
            return train["x"][:count]
        return cut_padding({k[2:]: v[:count] for k, v in train.items() if k.startswith("x.")})
    batch = next(iter(train_examples.take(count).batch(count)))
    x = batch if config.task == "nmt" or config.task == "bert-mlm" else batch[0]

    def raw(values):
        values = values.numpy()
        return [v.decode() for v in values] if values.dtype == object else values

    return keras.tree.map_structure(raw, x)


def _evaluation_batches(prepared, split, config):
    """The first `eval_examples` of a prepared split, in batches."""
    arrays = {k: v[:config.eval_examples] for k, v in prepared.splits[split].items()}
    return prepared_data.Batches(arrays, config.batch_size)


def _utilization(config, task_model, train_batches, timer, replicas):
    """The model's training TFLOPs per step and per second, and the MFU when
    there is a peak to measure it against (see flops.py). Per second: the
    median over the steps of each step's FLOPs (at its batch's padded
    length) over its time, which compilation does not move."""
    if not timer.seconds:
        return {}
    bucketed = isinstance(train_batches, prepared_data.Batches)
    per_step = [
        flops.nmt_training_flops(task_model.backbone, config.batch_size, length, length)
        for length in (train_batches.length(i) if bucketed else config.sequence_length
                       for i in range(len(timer.seconds)))
    ]
    achieved = float(np.median(np.divide(per_step, timer.seconds))) / 1e12
    peak = flops.peak_tflops(config.peak_tflops, _on_gpu(), replicas)
    result = {"model_tflops_per_step": round(float(np.mean(per_step)) / 1e12, 6),
              "model_tflops_per_second": round(achieved, 4)}
    if peak is not None:
        result["mfu"] = round(achieved / peak, 4)
    return result


def _on_gpu():
    """Whether the run trains on GPUs."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    return any("gpu" in device.lower() for device in keras.distribution.list_devices())


TIMING = ("train_seconds", "steps_per_second", "examples_per_second", "tokens_per_second",
          "step_seconds", "model_tflops_per_step", "model_tflops_per_second", "mfu")


def _recorded_timing(run_dir):
    """The timing keys of the run's `metrics.json`, if it has one."""
    try:
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as file:
            final = json.load(file)["final"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {k: final[k] for k in TIMING if k in final}


def summary(metrics):
    """The scores of `metrics` as short printable lines."""
    keep = {k: v for k, v in metrics.items() if k != "examples"}
    return json.dumps(keep, indent=2)
