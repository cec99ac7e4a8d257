import os, sys, time
sys.path.insert(0, "/tmp/xp_run")
from collab_keras.training import run
from collab_keras.training.config import RunConfig
import keras
voc = "/tmp/xp_quick/vocabulary_quick.txt"
for name, bs, lr, steps in [("b64_lr2", 64, 2e-3, 240), ("b64_lr4", 64, 4e-3, 240), ("b128_lr4", 128, 4e-3, 120)]:
    t = time.perf_counter()
    c = RunConfig(task="nmt", output_dir=f"/tmp/xp_calib2/{name}", preset="transformer_tiny", attention="collaborative", shared_key_dim=32,
                  vocabulary_file=voc, sequence_length=48, batch_size=bs, steps=steps, checkpoint_every=steps // 3, learning_rate=lr,
                  warmup_steps=steps // 10, eval_examples=301, beam_width=1, export=False)
    m = run.train(c)
    print(name, "total", round(time.perf_counter() - t, 1), "train_seconds", m["train_seconds"], "test_loss", round(m["test_loss"], 3), "bleu", m["bleu"], "chrf", round(m["chrf"], 2), flush=True)
    keras.backend.clear_session()
