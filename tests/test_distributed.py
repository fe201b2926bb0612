"""Data-parallel training (fastgrad.distributed): sharding, the one-rank path, and 2-rank MPI runs.

The MPI tests launch ``mpiexec -n 2`` on loopback in a subprocess (one numba
thread per rank) and are skipped when mpi4py or mpiexec is missing:
``pip install mpi4py mpich`` provides both.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import distributed as dist

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
MPI_TIMEOUT = 240  # seconds; a hang fails the test instead of blocking the suite


# -- sharding: pure functions, no MPI ----------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world", [(325, 32, 2), (320, 32, 2), (10, 4, 3), (7, 3, 4), (5, 8, 8), (1, 1, 2), (100, 7, 1)])
def test_every_sample_exactly_once_per_epoch(n, batch, world):
    for epoch in range(3):
        per_rank = [dist.shard_indices(n, batch, r, world, epoch=epoch, seed=3) for r in range(world)]
        steps = {len(s) for s in per_rank}
        assert steps == {-(-n // batch)}, "every rank must run the same number of steps"
        order = dist.epoch_order(n, epoch, seed=3)
        for b in range(-(-n // batch)):
            parts = [per_rank[r][b] for r in range(world)]
            # the union of the ranks' shards is exactly global batch b, in order
            np.testing.assert_array_equal(np.concatenate(parts), order[b * batch : (b + 1) * batch])
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
        everything = np.concatenate([idx for shards in per_rank for idx in shards])
        np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def test_sharding_is_deterministic_and_changes_with_epoch_and_seed():
    a = dist.shard_indices(50, 8, 1, 2, epoch=2, seed=5)
    b = dist.shard_indices(50, 8, 1, 2, epoch=2, seed=5)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    other_epoch = dist.shard_indices(50, 8, 1, 2, epoch=3, seed=5)
    other_seed = dist.shard_indices(50, 8, 1, 2, epoch=2, seed=6)
    assert not all(np.array_equal(u, v) for u, v in zip(a, other_epoch))
    assert not all(np.array_equal(u, v) for u, v in zip(a, other_seed))
    unshuffled = dist.shard_indices(10, 4, 0, 2, shuffle=False)
    assert [list(s) for s in unshuffled] == [[0, 1], [4, 5], [8]]


def test_epoch_order_is_sequential_fit_order():
    rng = np.random.default_rng(11)
    for epoch in range(4):
        np.testing.assert_array_equal(dist.epoch_order(30, epoch, seed=11), rng.permutation(30))


def test_sharding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        dist.batch_shards(np.arange(4), 2, 2, 2)
    with pytest.raises(ValueError, match="batch_size"):
        dist.shard_indices(4, 0, 0, 2)
    with pytest.raises(ValueError, match="world"):
        dist.shard_indices(4, 2, 0, 0)


# -- one process (SerialComm): no MPI needed ------------------------------------------------------------

def _mlp(seed=0):
    return fg.Sequential(fg.Dense(5, 7, "tanh", dtype=np.float64, seed=seed), fg.Dense(7, 3, dtype=np.float64, seed=seed + 1))


def test_one_rank_fit_is_sequential_fit_bitwise():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(45, 5)), rng.integers(0, 3, 45)
    a, b = _mlp(), _mlp()
    ha = a.fit(x, y, fg.CrossEntropyLoss(), fg.SGD(a, 0.1, momentum=0.9), epochs=3, batch_size=8, progress=False, clip_norm=1.0)
    opt = dist.DistributedOptimizer(fg.SGD(b, 0.1, momentum=0.9), comm=dist.SerialComm())
    hb = dist.fit(b, x, y, fg.CrossEntropyLoss(), opt, epochs=3, batch_size=8, progress=False, clip_norm=1.0,
                  comm=dist.SerialComm(), validation_data=(x, y))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-14)
    np.testing.assert_allclose(hb["accuracy"], ha["accuracy"], rtol=0)
    vl, va = b.evaluate(x, y, fg.CrossEntropyLoss())
    assert hb["val_loss"][-1] == pytest.approx(vl, rel=1e-14) and hb["val_accuracy"][-1] == va
    assert opt.reducer.calls == 3 * 6


def test_failure_inside_guard_is_reported_by_step():
    model = _mlp()
    opt = dist.DistributedOptimizer(fg.SGD(model, 0.1), comm=dist.SerialComm())
    before = {k: v.copy() for k, v in model.params.items()}
    with opt.guard():
        raise ValueError("boom")
    with pytest.raises(RuntimeError, match=r"rank 0 failed: ValueError: boom") as info:
        opt.step()
    assert isinstance(info.value.__cause__, ValueError)
    assert all(np.array_equal(before[k], model.params[k]) for k in before), "no step after a failure"
    opt.step()  # the error is consumed; the next step runs


@pytest.mark.parametrize("kwargs", [{}, {"count": 5}, {"count": 5, "total": 5}])
def test_one_rank_allreduce_keeps_the_gradient(kwargs):
    model = _mlp()
    rng = np.random.default_rng(2)
    for g in model.grads.values():
        g[...] = rng.normal(size=g.shape)
    before = {k: v.copy() for k, v in model.grads.items()}
    reducer = dist.GradientAllreducer(model, comm=dist.SerialComm())
    stats = reducer.allreduce(loss=0.25, correct=3, **kwargs)
    for k in before:
        np.testing.assert_allclose(model.grads[k], before[k], rtol=1e-15)
    assert stats.loss == pytest.approx(0.25) and stats.correct == 3 and reducer.calls == 1
    assert stats.count == kwargs.get("count", 0)


def test_distributed_optimizer_delegates_and_validates():
    model = _mlp()
    opt = dist.DistributedOptimizer(fg.Adam(model, 1e-3), comm=dist.SerialComm())
    opt.lr = 0.5
    assert opt.optimizer.lr == 0.5 and opt.lr == 0.5
    with pytest.raises(TypeError, match="optimizer"):
        dist.DistributedOptimizer(object())
    with pytest.raises(TypeError, match="already distributed"):
        dist.DistributedOptimizer(opt)
    with pytest.raises(ValueError, match="different model"):
        dist.fit(_mlp(), np.zeros((4, 5)), np.zeros(4, dtype=np.int64), fg.CrossEntropyLoss(), opt, comm=dist.SerialComm())


def test_serial_save_writes_the_model(tmp_path):
    model = _mlp()
    dist.save(model, tmp_path / "m.npz", comm=dist.SerialComm())
    loaded = fg.load(tmp_path / "m.npz")
    assert all(np.array_equal(loaded.params[k], model.params[k]) for k in model.params)
    with pytest.raises(RuntimeError, match="rank 0 failed"):
        dist.save(model, tmp_path / "missing-dir" / "m.npz", comm=dist.SerialComm())


def test_import_fastgrad_does_not_need_mpi4py():
    code = "import sys, fastgrad, fastgrad.distributed; assert 'mpi4py' not in sys.modules; print('ok')"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# -- two ranks under mpiexec ------------------------------------------------------------------------------

def _find_mpiexec():
    """FASTGRAD_MPIEXEC, else the mpiexec next to this Python (pip's mpich wheel puts it there), else PATH."""
    override = os.environ.get("FASTGRAD_MPIEXEC")
    if override:
        return override
    here = os.path.dirname(os.path.realpath(sys.executable))
    return shutil.which("mpiexec", path=here) or shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="MPI tests need mpi4py and mpiexec: pip install mpi4py mpich",
)


def _mpirun(script, *args, n=2):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(SCRIPTS / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=MPI_TIMEOUT, cwd=ROOT)


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_mpi_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("mpi")
    proc = _mpirun("equivalence.py", outdir)
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    with open(outdir / "results.json") as fh:
        results = json.load(fh)
    return outdir, results, proc.stdout


def _relative_difference(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


@needs_mpi
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_two_ranks_match_one_rank_on_the_global_batch(two_rank_run, name):
    """float64: 2 ranks x B/2 == 1 process x B after >= 20 steps (incl. an unequal last batch for "sgd")."""
    outdir, results, _ = two_rank_run
    script = _load_script("equivalence")
    n, batch, epochs, make_opt, loss_name, clip = script.SCENARIOS[name]
    x, y_int, y_real = script.data(n)
    y = script.targets(loss_name, y_int, y_real)
    reference = script.build(100)  # rank 0's initial model
    history = reference.fit(x, y, script.make_loss(loss_name), make_opt(reference), epochs=epochs, batch_size=batch,
                            progress=False, seed=7, clip_norm=clip)
    got = fg.load(outdir / f"{name}.npz")
    assert results["world"] == 2
    assert results[name]["allreduce_calls"] == epochs * -(-n // batch) >= 20
    assert results[name]["ranks_identical"] and results[name]["file_matches"]
    rel = _relative_difference(got.params, reference.params)
    print(f"{name}: max relative parameter difference 2 ranks vs 1 = {rel:.3g}")
    assert rel <= 1e-12
    np.testing.assert_allclose(results[name]["history"]["loss"], history["loss"], rtol=1e-12)


@needs_mpi
def test_callbacks_agree_on_every_rank_and_rank_0_writes(two_rank_run):
    _, results, _ = two_rank_run
    got = results["callbacks"]
    # the score stalls after epoch 1 (2.0): epochs 2 and 3 do not improve, so both ranks stop after epoch 3
    assert got["epochs"] == 4 and got["stopped_epoch"] == 3
    assert got["lr_per_rank"] == [0.2 * 0.5**2] * 2  # StepLR(2, 0.5) stepped 4 times on every rank
    assert got["checkpoint_epoch"] == 4 and got["checkpoint_matches"]


@needs_mpi
def test_a_failing_rank_raises_on_every_rank(two_rank_run):
    _, _, stdout = two_rank_run
    for r in (0, 1):
        assert f"rank {r} failure: RuntimeError: rank 1 failed: ValueError: cross_entropy: labels" in stdout, stdout
        assert f"rank {r} mismatch: ValueError: distributed.fit: (n_samples" in stdout, stdout


@needs_mpi
def test_uncaught_exception_aborts_all_ranks_instead_of_hanging():
    proc = _mpirun("crash.py")
    assert proc.returncode != 0
    assert "uncaught exception on rank 1" in proc.stderr and "deliberate failure on rank 1" in proc.stderr, proc.stderr
    assert "passed the barrier" not in proc.stdout
