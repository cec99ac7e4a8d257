"""Calibration of the translation grid (its output: calibration_1.txt).

    python benchmarks/results/2026-11-29-cpu-translation/calibration_1.py VOCABULARY_FILE

VOCABULARY_FILE: calibration_vocabulary.txt here (the 1,000-token vocabulary of `translation_bible.py --quick`,
`<output-dir>/vocabulary_quick.txt`). Each run is `run.train` of one setting.
"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from collab_keras.training import run
from collab_keras.training.config import RunConfig
import keras
voc = sys.argv[1]
for name, bs, jit, kind, size in [("b64_concat8", 64, None, "concatenate", 8), ("b64_nojit", 64, False, "collaborative", 8), ("b32_collab64", 32, None, "collaborative", 64)]:
    t = time.perf_counter()
    c = RunConfig(task="nmt", output_dir=f"/tmp/calibration/{name}", preset="transformer_tiny", attention=kind, shared_key_dim=size,
                  vocabulary_file=voc, sequence_length=48, batch_size=bs, steps=150, checkpoint_every=50, learning_rate=2e-3,
                  warmup_steps=15, eval_examples=301, beam_width=1, export=False, jit_compile=jit)
    m = run.train(c)
    print(name, "total", round(time.perf_counter() - t, 1), "train_seconds", m["train_seconds"], "bleu", m["bleu"], flush=True)
    keras.backend.clear_session()
