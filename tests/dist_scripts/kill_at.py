"""Hooks that interrupt their own training process (imported by test configs through
``custom_imports``): ``KillAt`` SIGKILLs it after an iteration (the hardest interruption: no
handler runs, no file is closed; priority LOWEST, so the iteration's checkpoint, if any, is
written first); ``SignalAt`` sends it a signal during an iteration, on one rank, as a cluster
would; ``DieWritingCheckpoint`` SIGKILLs it half-way through writing a checkpoint's bytes."""

from __future__ import annotations

import os
import signal

from mmengine.hooks import Hook

from hpff_dist.registry import HOOKS


@HOOKS.register_module()
class KillAt(Hook):
    priority = "LOWEST"

    def __init__(self, iteration: int | None = None) -> None:
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.iteration is not None and runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class SignalAt(Hook):
    """Send ``signal`` to this process at the start of iteration ``iteration`` (1-based), on
    rank ``rank`` only: the other ranks learn of it from the preemption hook."""

    def __init__(self, iteration: int, signal: str = "SIGUSR1", rank: int = 0) -> None:
        self.iteration, self.signal, self.rank = iteration, signal, rank

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 == self.iteration and runner.rank == self.rank:
            os.kill(os.getpid(), getattr(signal, self.signal))


@HOOKS.register_module()
class DieWritingCheckpoint(Hook):
    """At the save of the checkpoint of iteration ``iteration``, write half of its bytes and
    SIGKILL the process: a disk that fills up or a node that dies during the write."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 != self.iteration:
            return
        from mmengine.fileio.backends import LocalBackend

        def put_half_and_die(backend, obj, filepath):
            with open(filepath, "wb") as f:
                f.write(obj[: len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        LocalBackend.put = put_half_and_die
