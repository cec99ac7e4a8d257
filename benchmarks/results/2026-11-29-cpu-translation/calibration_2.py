"""Calibration of the translation grid (its output: calibration_2.txt).

    python benchmarks/results/2026-11-29-cpu-translation/calibration_2.py VOCABULARY_FILE

VOCABULARY_FILE: calibration_vocabulary.txt here (the 1,000-token vocabulary of `translation_bible.py --quick`,
`<output-dir>/vocabulary_quick.txt`). Each run is `run.train` of one setting.
"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from collab_keras.training import run
from collab_keras.training.config import RunConfig
import keras
voc = sys.argv[1]
for name, bs, lr, steps in [("b64_lr2", 64, 2e-3, 240), ("b64_lr4", 64, 4e-3, 240), ("b128_lr4", 128, 4e-3, 120)]:
    t = time.perf_counter()
    c = RunConfig(task="nmt", output_dir=f"/tmp/calibration2/{name}", preset="transformer_tiny", attention="collaborative", shared_key_dim=32,
                  vocabulary_file=voc, sequence_length=48, batch_size=bs, steps=steps, checkpoint_every=steps // 3, learning_rate=lr,
                  warmup_steps=steps // 10, eval_examples=301, beam_width=1, export=False)
    m = run.train(c)
    print(name, "total", round(time.perf_counter() - t, 1), "train_seconds", m["train_seconds"], "test_loss", round(m["test_loss"], 3), "bleu", m["bleu"], "chrf", round(m["chrf"], 2), flush=True)
    keras.backend.clear_session()
