"""Distribution on the engines that exist: tf.distribute and keras.distribution.

TensorFlow backend (`--strategy`):
    auto          multi-worker when TF_CONFIG is set, else mirrored over all
                  GPUs when there are several, else the default strategy
    default       one device
    mirrored      `tf.distribute.MirroredStrategy` over all GPUs (or, without
                  GPUs, all logical CPU devices)
    multi-worker  `tf.distribute.MultiWorkerMirroredStrategy`; needs TF_CONFIG
    tpu           `tf.distribute.TPUStrategy` on the TPU that
                  `TPUClusterResolver` finds (Colab, Cloud TPU VM, TPU_NAME)
JAX backend:
    auto          data-parallel when there are several devices
    default       one device
    data-parallel  `keras.distribution.DataParallel` over all devices
    model-parallel `keras.distribution.ModelParallel` on a (batch, model) mesh
                  with `layout_map()` sharding attention heads / shared key
                  dimensions, feed-forward and embedding widths on "model".
"""

import contextlib
import json
import os
import re

import keras

TF_STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu")
JAX_STRATEGIES = ("auto", "default", "data-parallel", "model-parallel")


def tf_strategy(name):
    """The `tf.distribute.Strategy` called `name` (see the module doc)."""
    import tensorflow as tf

    if name not in TF_STRATEGIES:
        raise ValueError(
            f"On the TensorFlow backend `strategy` must be one of {TF_STRATEGIES}. "
            f"Received: strategy={name!r}"
        )
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi-worker":
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        if not config.get("cluster", {}).get("worker"):
            raise ValueError(
                "`--strategy multi-worker` needs the TF_CONFIG environment "
                "variable describing the cluster and this worker's task, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}. '
                f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(
            "`--strategy tpu` found no TPU: TPUClusterResolver could not "
            f"resolve one ({type(error).__name__}: {error}). Run on a Colab "
            "TPU runtime or a Cloud TPU VM, or set TPU_NAME. Received: strategy='tpu'"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes the run's files (worker 0 of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return 0 if resolver is None or resolver.task_id is None else resolver.task_id


def num_replicas(strategy):
    if strategy is not None:
        return strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    return distribution.device_mesh.shape[
        distribution.device_mesh.axis_names.index(distribution.batch_dim_name)
    ]


# Weight-name rules of the model-parallel layout: (regex on the variable path,
# index of the axis split on "model" as a function of the rank). The zoo's
# attention layers name their sublayers query / key / value /
# attention_output; keras-hub's feed-forward blocks name theirs
# *intermediate_dense / *output_dense.
_LAYOUT_RULES = (
    (r"(^|/)(query|key|value)/kernel$", lambda rank: rank - 1 if rank == 2 else 1),
    (r"(^|/)value/bias$", lambda rank: 0),
    (r"(^|/)(query|key)/bias$", lambda rank: rank - 1 if rank == 1 else 0),
    (r"(^|/)mixing$", lambda rank: 1),
    (r"(^|/)attention_output/kernel$", lambda rank: 0),
    (r"intermediate_dense/kernel$", lambda rank: 1),
    (r"intermediate_dense/bias$", lambda rank: 0),
    (r"(?<!attention_)output_dense/kernel$", lambda rank: 0),
    (r"token_embedding/embeddings$", lambda rank: 1),
)


def layout_map(model, mesh):
    """A `keras.distribution.LayoutMap` for `model`'s weights on `mesh`.

    `model` is a built instance (built without a distribution); the map names
    each variable path exactly and splits the axis the rules above give when
    the mesh's "model" size divides it; everything else is replicated.
    """
    size = mesh.shape[mesh.axis_names.index("model")]
    layouts = keras.distribution.LayoutMap(mesh)
    for variable in model.weights:
        for pattern, axis_of in _LAYOUT_RULES:
            if re.search(pattern, variable.path):
                axis = axis_of(len(variable.shape))
                if axis < len(variable.shape) and variable.shape[axis] % size == 0:
                    axes = [None] * len(variable.shape)
                    axes[axis] = "model"
                    layouts[re.escape(variable.path) + "$"] = tuple(axes)
                break
    return layouts


def jax_distribution(name, build_model=None, model_parallel=2):
    """The `keras.distribution.Distribution` called `name` (JAX), or None.

    Args:
        name: see `JAX_STRATEGIES`.
        build_model: for "model-parallel", a function building the model
            (called once without a distribution to read its weight paths).
        model_parallel: size of the mesh's "model" axis.
    """
    if name not in JAX_STRATEGIES:
        raise ValueError(
            f"On the JAX backend `strategy` must be one of {JAX_STRATEGIES}. "
            f"Received: strategy={name!r}"
        )
    devices = keras.distribution.list_devices()
    if name == "auto":
        name = "data-parallel" if len(devices) > 1 else "default"
    if name == "default":
        return None
    if name == "data-parallel":
        return keras.distribution.DataParallel(devices=devices)
    if len(devices) % model_parallel:
        raise ValueError(
            f"`model_parallel` must divide the {len(devices)} devices. "
            f"Received: model_parallel={model_parallel}"
        )
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_parallel, model_parallel), ["batch", "model"], devices
    )
    return keras.distribution.ModelParallel(
        layout_map=layout_map(build_model(), mesh), batch_dim_name="batch"
    )


def scope(strategy):
    """`strategy.scope()` on TensorFlow, a null context elsewhere."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def work_around_multi_worker_fit(model, strategy):
    """Two Keras 3.15 bugs stop `fit` under MultiWorkerMirroredStrategy.

    1. Before training, `TensorFlowTrainer._maybe_symbolic_build` averages the
       first distributed batch with `strategy.reduce("MEAN", batch)`, which
       MultiWorkerMirroredStrategy rejects for a nested batch ("Attempt to
       convert a value (PerReplica...)"). The batch is only used for its
       shapes: this model's step takes this worker's local values instead.
    2. `reduce_per_replica` averages every step's logged scalars across
       workers with `strategy.reduce("MEAN", v, axis=0)`, which fails on a
       scalar ("Invalid reduction dimension 0"). With the multi-worker branch
       off it averages this worker's replicas, as for MirroredStrategy.
       Gradients are all-reduced by the optimizer either way, so the weights
       are those of synchronous training; the logged loss and metrics are
       this worker's (the chief's in the run folder).
    Nothing changes for other strategies.
    """
    if strategy is None:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches)
                )
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    trainer._collective_all_reduce_multi_worker = lambda strategy: False
