"""The engine's worker processes: a batch's shards on spawned processes give the numbers of one
process, fail as one error, and leave no process or shared memory behind."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from multiprocessing import shared_memory, synchronize

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from convscope.recording import TrainingDiverged, TrainingStopped
from convscope.scratch import Adam, evaluate, fit
from convscope.scratch import losses as L
from convscope.scratch.training import SPIN_SECONDS, _Shards
from tests.support.models import digits, digits_cnn


@pytest.fixture
def no_leftovers(monkeypatch):
    """The test leaves no worker process, and none of the shared-memory blocks and
    semaphores this process made, behind (by name: other tests beside it make theirs)."""
    made = []
    make_block = shared_memory.SharedMemory.__init__
    make_semaphore = synchronize.SemLock.__init__

    def block(self, *args, **kwargs):
        make_block(self, *args, **kwargs)
        made.append(self.name)

    def semaphore(self, *args, **kwargs):
        make_semaphore(self, *args, **kwargs)
        if self._semlock.name is not None:  # None: unlinked as it was made
            made.append("sem." + self._semlock.name.lstrip("/"))

    monkeypatch.setattr(shared_memory.SharedMemory, "__init__", block)
    monkeypatch.setattr(synchronize.SemLock, "__init__", semaphore)
    yield made
    gc.collect()  # a semaphore is unlinked when its last reference goes
    assert multiprocessing.active_children() == []
    assert [name for name in made if os.path.exists(os.path.join("/dev/shm", name))] == []


def test_fit_and_evaluate_give_the_same_numbers_on_any_number_of_processes(no_leftovers):
    # batches of 40 are three shards: one, two and three processes compute them
    x, y = digits(150)
    val = digits(45, seed=1)
    runs = []
    for workers in (1, 2, 3):
        model = digits_cnn(seed=5)
        record = fit(
            model,
            x,
            y,
            "sparse_categorical_crossentropy",
            Adam(0.01),
            epochs=2,
            batch_size=40,
            validation_data=val,
            workers=workers,
        )
        scores = evaluate(model, *val, "sparse_categorical_crossentropy", 256)
        runs.append((record.history, model.get_weights(), scores))
    history, weights, scores = runs[0]
    assert history["loss"][1] < history["loss"][0]
    # fit validates in batches of max(batch_size, 256): cut the same way, the same numbers
    assert scores == (history["val_loss"][-1], history["val_accuracy"][-1])
    for other_history, other_weights, other_scores in runs[1:]:
        assert other_history == history and other_scores == scores
        for w, v in zip(weights, other_weights, strict=True):
            np.testing.assert_array_equal(w, v)


def _started(runner: _Shards, workers: int) -> _Shards:
    deadline = time.monotonic() + 120
    while runner.started() < workers:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.01)
    return runner


def test_steps_on_started_workers_are_the_steps_in_one_process(no_leftovers):
    # fit may finish a short run before its workers start: here they compute shards 1 and 2,
    # their images and the weights read from shared memory; the first worker makes each
    # step's update of the dense layer at the start of the next step (Adam's slots in shared
    # memory), the others wait for it there, and the last one is made at the end; between
    # the steps the workers wait past their polling into a blocking wait
    x, y = digits(48)
    loss = L.get("sparse_categorical_crossentropy")
    runs = []
    for workers in (1, 3):
        model = digits_cnn(seed=5)
        own = model.params()
        adam = Adam(0.01)
        with _Shards(model, loss, workers, 3, (y.shape[1:], y.dtype), adam) as runner:
            _started(runner, workers - 1)
            steps = []
            for step in range(3):
                out = np.empty((48, 3), np.float32)
                value = runner.train_step(x[::-1] if step % 2 else x, y, out, 1)
                runner.update(adam)
                steps.append((value, out))
                time.sleep(5 * SPIN_SECONDS)
            runner.flush()
            trained = model.get_weights()
        # the model has its own arrays back, holding the weights trained; the optimizer its
        # state, in memory of its own
        assert all(a is b for a, b in zip(model.params(), own, strict=True))
        runs.append((steps, trained, model.get_weights(), adam.get_state()))
    (steps, trained, weights, state), (other_steps, *others) = runs
    for (value, out), (other_value, other_out) in zip(steps, other_steps, strict=True):
        assert value == other_value
        np.testing.assert_array_equal(out, other_out)
    for mine, theirs in zip((trained, weights), others, strict=False):
        for w, v in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(w, v)
    assert state["iterations"] == 3 and state.keys() == others[2].keys()
    for key, value in state.items():
        np.testing.assert_array_equal(value, others[2][key])
    assert not np.array_equal(weights[-2], digits_cnn(seed=5).get_weights()[-2])


def test_evaluation_on_started_workers_is_the_evaluation_in_one_process(no_leftovers):
    # the worker's share of the images (800 kB) is more than its pipe holds at once
    x, y = digits(4000, seed=1)
    model = digits_cnn(seed=5)
    loss = L.get("sparse_categorical_crossentropy")
    alone = evaluate(model, x, y, loss, 256)
    with _Shards(model, loss, 2, 2) as runner:
        assert _started(runner, 1).evaluate(x, y, 256) == alone


def test_a_run_on_workers_computes_on_one_blas_thread_in_every_process(no_leftovers):
    # the trainer's own shards too, so that no BLAS thread spins beside the workers; the
    # caller's limit comes back after the run
    def blas() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    seen = []
    with threadpool_limits(2, user_api="blas"):
        before = blas()
        fit(
            digits_cnn(),
            *digits(64),
            "sparse_categorical_crossentropy",
            "sgd",
            on_batch_end=lambda: seen.append(blas()),
            workers=2,
        )
        assert blas() == before
    assert len(seen) == 2 and all(s == {1} for s in seen)


def test_a_failure_in_a_worker_process_reaches_the_trainer(no_leftovers):
    x, y = digits(32)
    x[16:] = np.inf  # the second shard: the worker's
    out = np.empty((32, 3), np.float32)
    loss = L.get("sparse_categorical_crossentropy")
    with _Shards(digits_cnn(), loss, 2, 2) as runner:
        with pytest.raises(TrainingDiverged, match="at epoch 4"):
            _started(runner, 1).train_step(x, y, out, 4)


def test_a_failure_in_a_shard_stops_fit(no_leftovers):
    x, y = digits(64)
    model = digits_cnn()
    with pytest.raises(TrainingDiverged, match="at epoch 1"):
        fit(model, x * 1e30, y, "sparse_categorical_crossentropy", "sgd", workers=2)
    with pytest.raises(ValueError, match="workers"):
        fit(model, x, y, "sparse_categorical_crossentropy", "sgd", workers=0)


def test_stopping_in_the_epoch_hook_stops_the_worker_processes(no_leftovers):
    def stop(epoch, logs, kernels):
        if epoch == 1:  # epoch 0 is the state before training
            raise TrainingStopped(epoch, "pruned")

    x, y = digits(64)
    with pytest.raises(TrainingStopped):
        fit(
            digits_cnn(),
            x,
            y,
            "sparse_categorical_crossentropy",
            "sgd",
            3,
            on_epoch=stop,
            workers=2,
        )


def test_a_worker_process_that_dies_stops_fit_with_one_error(no_leftovers):
    def kill_a_worker():
        worker = multiprocessing.active_children()[0]
        worker.kill()
        worker.join()

    x, y = digits(64)
    with pytest.raises(RuntimeError, match="worker process ended unexpectedly"):
        fit(
            digits_cnn(),
            x,
            y,
            "sparse_categorical_crossentropy",
            "sgd",
            on_batch_end=kill_a_worker,
            workers=2,
        )


@pytest.mark.parametrize("batch_size", [32, 256])
def test_train_mnist_starts_a_worker_only_for_a_run_that_repays_it(no_leftovers, batch_size):
    """A run of MIN_WORKER_PASSES shard passes (two a step at batch 32, sixteen at 256) gets a
    worker per further core BLAS would use; a shorter one trains in its own process."""
    from convscope.config.schema import ScratchCNNConfig
    from convscope.engine_train import MIN_WORKER_PASSES, default_threads, train_mnist
    from convscope.scratch.training import shards

    rng = np.random.default_rng(0)
    seen = []

    def count(epoch, logs, kernels):
        seen.append(len(multiprocessing.active_children()))

    per_step = len(shards(batch_size))
    enough = -(-MIN_WORKER_PASSES // per_step)  # steps
    for steps in (enough - 1, enough):
        n = steps * batch_size
        x = rng.random((n, 28, 28, 1)).astype(np.float32)
        y = rng.integers(0, 10, n)
        cfg = ScratchCNNConfig(epochs=1, batch_size=batch_size, validation_split=0.0, filters=2)
        train_mnist(cfg, x, y, on_epoch=count, progress=False)
    # the hook runs before training (epoch 0, no worker yet) and after the epoch
    assert seen == [0, 0, 0, default_threads() - 1]
