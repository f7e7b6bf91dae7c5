"""Preemption and time limits that lose nothing: checkpoint at the iteration, exit, come back.

A cluster ends a job with a signal: SLURM sends ``--signal=USR1@<seconds>`` before the time
limit and SIGTERM on preemption, ``scancel`` or ``scontrol requeue`` (then SIGKILL after
``KillWait``). Without a handler everything since the last epoch checkpoint is lost (an ImageNet
epoch is hours). :class:`PreemptionHook` turns either signal into: finish the current
iteration, agree across ranks (the signal reaches ranks at different iterations), write
``iter_N.pth`` of that iteration on every rank (atomically, like every checkpoint here) and
point ``last_checkpoint`` at it, then exit with :data:`EXIT_PREEMPTED`. The sbatch scripts
requeue the job on that code; the next run's ``--resume auto`` continues mid-epoch
(``ResumableEpochBasedTrainLoop``) exactly where this one stopped.

The handler only records the signal: a checkpoint being written when it arrives is finished
first, and no half-written file ever carries a checkpoint's name.
"""

from __future__ import annotations

import os.path as osp
import signal
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.hooks import Hook
from mmengine.logging import print_log

from hpff_dist.engine.checkpoint_files import (
    LAST_CHECKPOINT_FILE,
    atomic_write,
    recorded_checkpoint,
)
from hpff_dist.registry import HOOKS

__all__ = ["EXIT_PREEMPTED", "PreemptionHook", "Preempted"]

#: Exit code of a run that checkpointed on a signal and wants to be requeued (sysexits'
#: EX_TEMPFAIL: "temporary failure, try again later").
EXIT_PREEMPTED = 75


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits the process with 75."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """On ``signals`` (default SIGUSR1 and SIGTERM): checkpoint after the current iteration on
    every rank, then exit with :data:`EXIT_PREEMPTED`.

    Priority LOWEST: the iteration's other hooks (logging, a regular checkpoint) run first; when
    ``CheckpointHook`` has just saved this iteration, that checkpoint is the one kept.
    """

    priority = "LOWEST"

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1", "SIGTERM")) -> None:
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise ValueError(f"PreemptionHook: unknown signal names {unknown} (e.g. 'SIGUSR1')")
        self.signals = [getattr(signal, s) for s in signals]
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------------ signals
    def _record(self, signum: int, frame: Any) -> None:
        self.received = signum  # nothing else in a signal handler: the loop acts on it

    def before_train(self, runner) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._record)

    def after_train(self, runner) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # ------------------------------------------------------------------ acting on one
    def _agreed(self) -> bool:
        """Whether any rank has received a signal (every rank calls this each iteration, so
        all stop after the same iteration)."""
        flag = 1.0 if self.received is not None else 0.0
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            return bool(flag)
        on_gpu = torch_dist.get_backend() == "nccl" and torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        tensor = torch.tensor([flag], device=device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return bool(tensor.item())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._agreed():
            return
        path = self._save(runner)
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        print_log(
            f"{name}: stopped after iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch "
            f"{_batch_in_epoch(runner)} of {len(runner.train_dataloader)}); checkpoint {path}; exiting "
            f"with {EXIT_PREEMPTED} so the job is requeued and resumes there (--resume auto)",
            logger="current",
        )
        # from here on the signals are ignored, not reset: Python restores the default
        # handlers late in its shutdown, and a second SIGTERM then (srun's kill-on-bad-exit
        # after another rank exited 75) would turn this exit 75 into 143, and no requeue
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)
        self._previous.clear()
        raise Preempted()

    def _save(self, runner) -> str:
        """Write ``iter_<N>.pth`` of this iteration unless ``CheckpointHook`` just did."""
        out_dir = runner.work_dir
        for hook in runner.hooks:
            if type(hook).__name__ == "CheckpointHook" and getattr(hook, "out_dir", None):
                out_dir = hook.out_dir
        filename = f"iter_{runner.iter + 1}.pth"
        path = osp.join(out_dir, filename)
        if recorded_checkpoint(runner.work_dir) == path and osp.exists(path):
            return path  # the regular checkpoint of this very iteration
        runner.save_checkpoint(out_dir, filename, by_epoch=False)  # meta: epoch, iter + 1
        runner.message_hub.update_info("last_ckpt", path)
        if runner.rank == 0:
            record = osp.join(runner.work_dir, LAST_CHECKPOINT_FILE)
            atomic_write(record, lambda partial: _write_text(partial, path))
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.barrier()
        return path


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _batch_in_epoch(runner) -> int:
    """1-based batch of the current epoch (pass) just trained: mmengine's iteration loop passes
    the iteration as ``batch_idx``; both our loops count epochs, so this holds for both."""
    return runner.iter - runner.epoch * len(runner.train_dataloader) + 1
