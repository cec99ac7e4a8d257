"""Every zoo task trains under tf.distribute.MirroredStrategy on two logical
CPUs, with raw inputs through its preprocessor.

The logical devices must be set before TensorFlow starts, so the training
runs in a fresh Python process. jit_compile is tested in the per-model test
files: XLA cannot place MirroredStrategy's per-replica variables of logical
CPUs ("Trying to access resource ... located in device CPU:1 from device
CPU:0", TensorFlow's XLA known issues), a limitation of TensorFlow.
"""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
from collab_keras import models as zoo

vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a great bad movie film".split()
)
sentences = ["a great movie", "a bad film"] * 2
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
losses = {}
with strategy.scope():
    tokenizer = zoo.BertTokenizer(vocabulary=vocabulary)
    backbone = zoo.BertBackbone(
        len(vocabulary), 1, 2, 16, 32, max_sequence_length=8,
        attention="collaborative", shared_key_dim=8,
    )
    classifier = zoo.BertTextClassifier(
        backbone, 2,
        zoo.BertTextClassifierPreprocessor(tokenizer, sequence_length=8),
    )
    masked_lm = zoo.BertMaskedLM(
        backbone,
        zoo.BertMaskedLMPreprocessor(
            tokenizer, sequence_length=8, mask_selection_length=2
        ),
    )
    vit = zoo.ViTImageClassifier(
        zoo.ViTBackbone(
            (8, 8, 3), 4, 1, 2, 16, 32,
            attention="collaborative", shared_key_dim=8,
        ),
        3,
        zoo.ViTImageClassifierPreprocessor(
            zoo.ViTImageConverter(image_size=(8, 8), scale=1 / 255)
        ),
    )
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3))
    for name, task, x, y in (
        ("classifier", classifier, sentences, np.array([1, 0] * 2)),
        ("masked_lm", masked_lm, sentences, None),
        ("vit", vit, images.astype("uint8"), np.array([0, 1, 2, 0])),
    ):
        task.compile()
        history = task.fit(x, y, batch_size=4, epochs=2, verbose=0)
        losses[name] = history.history["loss"]
print("LOSSES", json.dumps(losses))
"""


@pytest.mark.slow
def test_every_task_fits_under_mirrored_strategy():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(
        line for line in result.stdout.splitlines() if line.startswith("LOSSES")
    )
    losses = json.loads(line.split(" ", 1)[1])
    assert sorted(losses) == ["classifier", "masked_lm", "vit"]
    for values in losses.values():
        assert len(values) == 2
        assert all(value == value and value < 1e3 for value in values)
