"""Run by tests/test_training.py in fresh processes: train in one go, or in two halves with a checkpoint between.

Usage: python resume_script.py MODE OPTIMIZER DIR
  full   - manual_seed, build, fit epochs 0-3, write DIR/full-OPTIMIZER.npz
  first  - manual_seed, build, fit epochs 0-1 with ModelCheckpoint -> DIR/ckpt-OPTIMIZER.npz
  resume - load_checkpoint, restore the schedule, fit epochs 2-3 (checkpoints to DIR/resume-ckpt-OPTIMIZER.npz),
           write DIR/resumed-OPTIMIZER.npz
  fresh  - as resume, but with a new optimizer instead of the saved one (must differ)
The model is built with seed=None (the default generator) and trained with a StepLR schedule, gradient
clipping, validation and the default shuffle seed (fg.initial_seed(), restored with the random state).
"""

import os
import sys

import numpy as np

import fastgrad as fg

EPOCHS = 4


def data():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(90, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, y


def build():
    return fg.Sequential(fg.Dense(6, 16, "tanh", dtype=np.float64), fg.Dense(16, 3, dtype=np.float64))


def make_optimizer(kind, model):
    if kind == "sgd":
        return fg.SGD(model, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return fg.Adam(model, 3e-3, weight_decay=1e-4)


def fit(model, opt, epochs, initial_epoch, callbacks):
    x, y = data()
    return model.fit(x, y, fg.CrossEntropyLoss(), opt, epochs=epochs, initial_epoch=initial_epoch, batch_size=16, progress=False,
                     clip_norm=2.0, validation_data=(x[:30], y[:30]), callbacks=callbacks)


def main(mode, kind, outdir):
    ckpt = os.path.join(outdir, f"ckpt-{kind}.npz")
    if mode in ("full", "first"):
        fg.manual_seed(1234)
        model = build()
        opt = make_optimizer(kind, model)
        callbacks = [fg.StepLR(opt, step_size=2, gamma=0.5), fg.ModelCheckpoint(ckpt, save_best_only=False)]
        fit(model, opt, EPOCHS if mode == "full" else 2, 0, callbacks)
        if mode == "first":
            return
        out = os.path.join(outdir, f"full-{kind}.npz")
    else:
        ck = fg.load_checkpoint(ckpt)
        assert ck.epoch == 2, ck.epoch
        fg.set_rng_state(ck.rng_state)
        model = ck.model
        opt = ck.optimizer if mode == "resume" else make_optimizer(kind, model)
        callbacks = [fg.StepLR(opt, step_size=2, gamma=0.5), fg.ModelCheckpoint(os.path.join(outdir, f"{mode}-ckpt-{kind}.npz"))]
        ck.restore_callbacks(callbacks)
        fit(model, opt, EPOCHS, ck.epoch, callbacks)
        out = os.path.join(outdir, f"{'resumed' if mode == 'resume' else 'fresh'}-{kind}.npz")
    np.savez(out, lr=np.array(opt.lr), **{k.replace(".", "_"): v for k, v in model.params.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
