"""Local-learning pipeline (``hpff_dist.local.pipeline``) against data parallelism and
``torch.distributed.pipelining`` on the CPUs: images/s, per-rank memory, message waits.

    python tools/benchmark_pipeline.py [--depths 110,32] [--methods dgl_hpff[,dgl]]
        [--micro-batches 4,8,16] [--steps 3] [--warmup 1] [--repeat N] [--out-dir docs/bench]

Every row trains a CIFAR ResNet (random 32x32 images, 10 classes, ``--batch`` images per
optimizer step in all, SGD momentum 0.9) in its own fresh ``torchrun --standalone`` process set
of 2 processes x 1 thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), except the
single-process anchor (1 x 1 thread):

* (a) ``local pipe``: our local pipeline, P=2 stages. Rank 0 measures ``module_costs`` on one
  micro-batch, ``balanced_stages`` cuts the K modules, the bounds are broadcast; each rank
  ``keep_modules`` its stage and trains ``pipeline_stage_step`` over M micro-batches, SGD over
  its stage's parameters. One row per M (``--micro-batches``).
* (b) ``local DP``: local learning data parallel, D=2: each rank ``train_step_losses`` on half
  the batch, then ONE all_reduce of a flat buffer of every gradient (averaged) and the step
  (DDP's hooks fire once per backward call, and the local schedules make many).
* (c) ``local 1p``: single process, one thread, the whole batch, no micro-batches: the anchor
  every ratio is taken to.
* (d) ``E2E DDP``: end-to-end backprop, ``DistributedDataParallel``, half the batch per rank.
* (e) ``E2E GPipe`` / ``E2E 1F1B``: end-to-end backprop through ``torch.distributed.pipelining``
  (``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B``), the network cut into two
  ``nn.Sequential`` halves at the block that balances the measured per-block cost (rank 0,
  forward + backward of stem, each block and the head on one micro-batch; stem and head count
  with the first and last block), one row per M.

Per row and rank:

* images/s: ``batch * steps`` / wall clock of the timed steps (after ``--warmup`` steps, from a
  barrier), the slowest rank's;
* ``saved_peak``: peak bytes of tensors saved for backward (``SavedTensorMeter``, parameters
  excluded) during one step, the last warm-up step (shapes are fixed, so every step saves the
  same; the hooks stay out of the timed steps);
* ``rss_growth``: peak RSS of the timed steps (``/proc/self/status`` VmHWM, reset through
  ``/proc/self/clear_refs`` after warm-up) minus the RSS before the first step (model, optimizer
  and data built, ``malloc_trim``-ed): what training holds beyond the built model
  (gradients, momentum, activations, communication buffers, allocator caching);
* (a) only: seconds per step the stage spent blocked on messages, from a ``StageLink``
  subclass: ``wait_upstream`` (the header of an activation: waiting for the stage before to
  produce it), ``recv_payload`` (the activation's data after its header), ``wait_h`` (the
  cascade gradient h from the stage after), ``wait_send`` (sends still in flight at the end),
  and the one-way time of a bare message of the cut's activation measured after the run.

* ``cpu_share``: the rank's CPU seconds / wall seconds over the timed steps, and per row
  ``others_cores``: the cores the rest of the machine kept busy meanwhile (``/proc/stat``
  minus our ranks): a shared machine's noise, visible.

``--repeat N`` repeats the whole set of rows (round-robin, each in fresh processes); the JSON
and the table give the median and the range (min-max). Writes ``pipeline_cpu.json`` and
``pipeline_cpu.png`` into ``--out-dir`` and prints a markdown table and PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: K per CIFAR depth as published (ResNet-32 K=16, ResNet-110 K=55); others: --k.
DEFAULT_K = {32: 16, 110: 55}
NUM_CLASSES, IMAGE = 10, 32


# ============================================================================ worker side
def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has been busy (``/proc/stat``: user, nice,
    system, irq, softirq), to tell how much of a row's wall clock other processes took."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _trim() -> None:
    """Give freed heap memory back to the OS, so the RSS baseline is what is really held."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _TimedWork:
    """A ``torch.distributed`` work whose ``wait`` adds its blocked seconds to a bucket."""

    def __init__(self, work, link, bucket: str) -> None:
        self.work, self.link, self.bucket = work, link, bucket

    def wait(self):
        t0 = time.perf_counter()
        try:
            return self.work.wait()
        finally:
            self.link.add(self.bucket, time.perf_counter() - t0)


def _timed_link_class():
    from hpff_dist.local.pipeline import StageLink

    class TimedLink(StageLink):
        """``StageLink`` that adds up the seconds spent blocked on each kind of message."""

        def __post_init__(self) -> None:
            super().__post_init__()
            self.waits: dict[str, float] = {}
            self.counting = False
            self.sent_shape: list[int] | None = None
            self._recv_part: int | None = None

        def add(self, bucket: str, seconds: float) -> None:
            if self.counting:
                self.waits[bucket] = self.waits.get(bucket, 0.0) + seconds

        def _wait(self, ops):
            # Only ``recv_activation`` waits here: first its header, then its data.
            t0 = time.perf_counter()
            super()._wait(ops)
            part = self._recv_part or 0
            self.add("wait_upstream" if part == 0 else "recv_payload", time.perf_counter() - t0)
            self._recv_part = part + 1

        def recv_activation(self, device):
            self._recv_part = 0
            try:
                return super().recv_activation(device)
            finally:
                self._recv_part = None

        def _timed(self, items, bucket):
            return [_TimedWork(w, self, bucket) if hasattr(w, "wait") else w for w in items]

        def send_activation(self, tensor):
            self.sent_shape = list(tensor.shape)
            return self._timed(super().send_activation(tensor), "wait_send")

        def send_cascade(self, h):
            return self._timed(super().send_cascade(h), "wait_send")

        def post_recv_cascade(self, like):
            works, buffer = super().post_recv_cascade(like)
            return self._timed(works, "wait_h"), buffer

    return TimedLink


def _learner(row: dict, method: str):
    from hpff_dist.local import build_local_learner
    from hpff_dist.local.split import SPLIT_TABLES
    from hpff_dist.models.cifar_resnet import CifarResNet

    depth, k = row["depth"], row["k"]
    arch = f"resnet{depth}"
    spec = dict(method=method) if method == "e2e" else dict(method=method, k=k)
    if method != "e2e" and k not in SPLIT_TABLES.get(arch, {}):
        arch = None  # no published table: a balanced split
    import torch

    torch.manual_seed(0)
    net = CifarResNet(depth, num_classes=NUM_CLASSES)
    return build_local_learner(net, arch, NUM_CLASSES, spec, image_size=IMAGE).train()


def _sgd(params):
    import torch

    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


def _setup_local_pipe(row, rank, world, images, targets):
    """(a): returns the step, the stage's parameters and the per-row extras."""
    import torch.distributed as dist

    from hpff_dist.local import PlainBackward
    from hpff_dist.local.pipeline import (
        balanced_stages,
        micro_batches,
        module_costs,
        pipeline_stage_step,
    )

    learner = _learner(row, row["method"])
    mbs = micro_batches(images, targets, None, row["micro"])
    shared: list = [None]
    if rank == 0:
        costs = module_costs(learner.local_modules, mbs[0], PlainBackward(), row["cost_repeats"])
        learner.zero_grad(set_to_none=True)
        shared = [dict(costs=costs, bounds=balanced_stages(costs, world))]
    dist.broadcast_object_list(shared, src=0)
    costs, bounds = shared[0]["costs"], [tuple(b) for b in shared[0]["bounds"]]
    start, end = bounds[rank]
    nxt = learner.local_modules[end] if end < len(learner.local_modules) else None
    link = _timed_link_class()(
        rank,
        world,
        rank - 1 if rank > 0 else None,
        rank + 1 if rank < world - 1 else None,
        receives_cascade=nxt is not None and nxt.sends_cascade,
    )
    num_modules = len(learner.local_modules)
    cascade = learner.local_modules[bounds[1][0]].sends_cascade
    learner.keep_modules(start, end)
    modules = learner.local_modules
    params = list(learner.parameters())
    opt = _sgd(params)
    backward = PlainBackward()

    def step():
        opt.zero_grad(set_to_none=True)
        pipeline_stage_step(modules, link, mbs, backward)
        opt.step()

    stage_cost = [sum(costs[a:b]) for a, b in bounds]
    m = row["micro"]
    if cascade:
        # Synchronous steps: stage 0 ends each step waiting for the h of the last
        # micro-batch, which stage 1 sends once all its modules ran on it (fill + drain).
        model = max(stage_cost[0] + m * stage_cost[1], m * stage_cost[0] + stage_cost[1])
    else:
        # Nothing flows back: stage 0 runs ahead into the next step, the slowest stage rules.
        model = m * max(stage_cost)
    extras = dict(
        bounds=bounds,
        num_modules=num_modules,
        module_costs_s=costs,
        stage_cost_per_micro_s=stage_cost,
        one_forward_on_micro_s=m * sum(costs),
        model_step_s=model,
        cascade_between_stages=cascade,
    )
    return step, learner, extras, link


def _flat_allreduce(params, timer: dict):
    import torch
    import torch.distributed as dist

    sizes = [p.numel() for p in params]
    flat: list = [None]

    def reduce() -> None:
        if flat[0] is None:
            flat[0] = torch.empty(sum(sizes))
        buf, offset = flat[0], 0
        for p, n in zip(params, sizes):
            if p.grad is None:
                buf[offset : offset + n].zero_()
            else:
                buf[offset : offset + n].copy_(p.grad.reshape(-1))
            offset += n
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        timer["allreduce"] = timer.get("allreduce", 0.0) + time.perf_counter() - t0
        buf /= dist.get_world_size()
        offset = 0
        for p, n in zip(params, sizes):
            p.grad = buf[offset : offset + n].view_as(p)
            offset += n

    return reduce


def _setup_local_dp(row, rank, world, images, targets):
    learner = _learner(row, row["method"])
    per = images.shape[0] // world
    x, y = images[rank * per : (rank + 1) * per], targets[rank * per : (rank + 1) * per]
    params = list(learner.parameters())
    opt = _sgd(params)
    timer: dict = {}
    reduce = _flat_allreduce(params, timer) if world > 1 else None

    def step():
        opt.zero_grad(set_to_none=True)
        learner.train_step_losses(x, y)
        if reduce is not None:
            reduce()
        opt.step()

    return step, learner, dict(per_rank_batch=per, comm_timer=timer), None


def _setup_e2e_ddp(row, rank, world, images, targets):
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    learner = _learner(row, "e2e")
    per = images.shape[0] // world
    x, y = images[rank * per : (rank + 1) * per], targets[rank * per : (rank + 1) * per]
    ddp = DistributedDataParallel(learner.net)
    opt = _sgd(ddp.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()

    return step, learner, dict(per_rank_batch=per), None


def _block_costs(net, x, targets, repeats: int) -> list[float]:
    """Forward + backward seconds of each block on ``x`` (stem added to the first block's,
    head + loss to the last's), median of ``repeats`` after one warm-up."""
    import torch.nn.functional as F

    units = [net.stem, *net.blocks, net.head]
    runs: list[list[float]] = [[] for _ in units]
    for run in range(repeats + 1):
        h = x
        for i, unit in enumerate(units):
            leaf = h.detach().requires_grad_(i > 0)
            t0 = time.perf_counter()
            out = unit(leaf)
            if i == len(units) - 1:
                F.cross_entropy(out, targets).backward()
            else:
                out.backward(out.detach() * 0 + 1e-3)
            if run:
                runs[i].append(time.perf_counter() - t0)
            h = out
    med = [sorted(r)[len(r) // 2] for r in runs]
    blocks = med[1:-1]
    blocks[0] += med[0]
    blocks[-1] += med[-1]
    net.zero_grad(set_to_none=True)
    return blocks


def _setup_e2e_pipe(row, rank, world, images, targets):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from hpff_dist.local.pipeline import balanced_stages, micro_batches

    learner = _learner(row, "e2e")
    net = learner.net
    m = row["micro"]
    shared: list = [None]
    if rank == 0:
        mb = micro_batches(images, targets, None, m)[0]
        costs = _block_costs(net, mb.inputs, mb.targets, row["cost_repeats"])
        shared = [dict(costs=costs, bounds=balanced_stages(costs, world))]
    dist.broadcast_object_list(shared, src=0)
    costs, bounds = shared[0]["costs"], [tuple(b) for b in shared[0]["bounds"]]
    start, end = bounds[rank]
    parts = list(net.blocks[start:end])
    if rank == 0:
        parts = [net.stem, *parts]
    if rank == world - 1:
        parts = [*parts, net.head]
    stage_module = nn.Sequential(*parts)
    del learner, net
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[row["schedule"]]
    schedule = cls(stage, n_microbatches=m, loss_fn=F.cross_entropy)
    opt = _sgd(stage_module.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(images)
        elif rank == world - 1:
            schedule.step(target=targets, return_outputs=False)
        else:
            schedule.step()
        opt.step()

    extras = dict(
        bounds=bounds,
        cut_block=bounds[0][1],
        num_blocks=len(costs),
        block_costs_s=costs,
        stage_cost_per_micro_s=[sum(costs[a:b]) for a, b in bounds],
    )
    return step, stage_module, extras, None


SETUPS = {
    "local_pipe": _setup_local_pipe,
    "local_dp": _setup_local_dp,
    "local_1p": _setup_local_dp,
    "e2e_ddp": _setup_e2e_ddp,
    "e2e_pipe": _setup_e2e_pipe,
}


def _bare_message_s(link, rank: int, reps: int = 5) -> float:
    """One-way seconds of one message of the cut's activation, both ranks ready (ping-pong)."""
    import torch
    import torch.distributed as dist

    shape = [link.sent_shape if rank == 0 else None]
    dist.broadcast_object_list(shape, src=0)
    buf = torch.randn(shape[0])
    peer = 1 - rank
    times = []
    for _ in range(reps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
        times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times[1:])


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from hpff_dist.local import SavedTensorMeter

    torch.set_num_threads(1)
    row = json.loads(args.row)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(row["batch"], 3, IMAGE, IMAGE, generator=g)
    targets = torch.randint(0, NUM_CLASSES, (row["batch"],), generator=g)
    step, owner, extras, link = SETUPS[row["kind"]](row, rank, world, images, targets)
    params = sum(p.numel() for p in owner.parameters())
    _trim()
    rss_base = _proc_status("VmRSS")
    meter = None
    for i in range(row["warmup"]):
        if i == row["warmup"] - 1:
            with SavedTensorMeter(ignore=owner) as meter:
                step()
        else:
            step()
    hwm_reset = _reset_hwm()
    comm = extras.pop("comm_timer", {})
    comm.clear()
    if link is not None:
        link.counting = True
    dist.barrier()
    busy0, cpu0, t0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    for _ in range(row["steps"]):
        step()
    elapsed = time.perf_counter() - t0
    cpu, busy = time.process_time() - cpu0, _cpu_busy_s() - busy0
    rss_peak = _proc_status("VmHWM")
    if link is not None:
        link.counting = False
    mine = dict(
        rank=rank,
        elapsed_s=elapsed,
        params=params,
        saved_peak_bytes=meter.peak_bytes if meter is not None else 0,
        rss_base_bytes=rss_base,
        rss_peak_bytes=rss_peak,
        rss_growth_bytes=rss_peak - rss_base,
        rss_peak_timed_only=hwm_reset,
        threads=torch.get_num_threads(),
        cpu_s_per_step=cpu / row["steps"],
        cpu_share=cpu / elapsed,
        machine_busy_s=busy,
    )
    if comm:
        mine["allreduce_s_per_step"] = comm["allreduce"] / row["steps"]
    if link is not None:
        waits = {k: v / row["steps"] for k, v in link.waits.items()}
        mine["waits_s_per_step"] = waits
        mine["blocked_s_per_step"] = sum(waits.values())
        mine["compute_s_per_step"] = elapsed / row["steps"] - sum(waits.values())
        mine["bare_message_s"] = _bare_message_s(link, rank)
        mine["message_shape"] = link.sent_shape
    ranks: list = [None] * world
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        slowest = max(r["elapsed_s"] for r in ranks)
        ours = sum(r["cpu_s_per_step"] * row["steps"] for r in ranks)
        # CPU the rest of the machine used meanwhile, in cores (noise: another user's job).
        extras["others_cores"] = max(0.0, busy - ours) / elapsed
        if link is not None:
            shape = ranks[0]["message_shape"]
            extras["message_shape"] = shape
            extras["message_bytes"] = 4 * int(torch.tensor(shape).prod())
        result = dict(
            row,
            **extras,
            ranks=ranks,
            elapsed_s=slowest,
            step_s=slowest / row["steps"],
            images_per_s=row["batch"] * row["steps"] / slowest,
        )
        Path(args.out).write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


# ============================================================================ launcher side
def plan_rows(args: argparse.Namespace) -> list[dict]:
    """Every row of one repeat: per network, per local method (a) per M, (b), (c); then (d),
    (e) GPipe and 1F1B per M."""
    micro = [int(m) for m in str(args.micro_batches).split(",")]
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for depth in [int(d) for d in str(args.depths).split(",")]:
        k = args.k or DEFAULT_K.get(depth)
        if k is None:
            raise SystemExit(f"no default K for depth {depth}: give --k")
        base = dict(
            net=f"resnet{depth}",
            depth=depth,
            k=k,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
            cost_repeats=args.cost_repeats,
        )
        for method in methods:
            for m in micro:
                rows.append(
                    dict(base, kind="local_pipe", case="a", method=method, procs=2, micro=m)
                )
            rows.append(dict(base, kind="local_dp", case="b", method=method, procs=2, micro=1))
            rows.append(dict(base, kind="local_1p", case="c", method=method, procs=1, micro=1))
        rows.append(dict(base, kind="e2e_ddp", case="d", method="e2e", procs=2, micro=1))
        for schedule in ("gpipe", "1f1b"):
            for m in micro:
                rows.append(
                    dict(
                        base,
                        kind="e2e_pipe",
                        case="e",
                        method="e2e",
                        procs=2,
                        micro=m,
                        schedule=schedule,
                    )
                )
    for r in rows:
        r["name"] = row_name(r)
    return rows


def row_name(r: dict) -> str:
    kind = r["kind"]
    if kind == "local_pipe":
        return f"(a) {r['method']} local pipe P=2 M={r['micro']}"
    if kind == "local_dp":
        return f"(b) {r['method']} local DP D=2"
    if kind == "local_1p":
        return f"(c) {r['method']} local 1 proc"
    if kind == "e2e_ddp":
        return "(d) e2e DDP D=2"
    return f"(e) e2e {'GPipe' if r['schedule'] == 'gpipe' else '1F1B'} P=2 M={r['micro']}"


def run_row(row: dict, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(row["procs"]),
            os.path.abspath(__file__),
            "--worker",
            "--row",
            json.dumps(row),
            "--out",
            out,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=not args.verbose,
            text=True,
            timeout=args.row_timeout,
        )
        if proc.returncode != 0:
            tail = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
            raise SystemExit(f"row {row['net']} {row['name']} failed:\n{tail}")
        return json.loads(Path(out).read_text())


def _stats(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def combine(runs: list[dict], anchor_runs: list[dict] | None) -> dict:
    """One row over its repeats: medians and ranges of images/s and per-rank memory and waits;
    ratios to (c) per repeat (same repeat, side by side) and of the medians."""
    first = runs[0]
    out = {k: v for k, v in first.items() if k not in ("ranks", "elapsed_s", "step_s")}
    out["repeats"] = len(runs)
    out["images_per_s"] = _stats([r["images_per_s"] for r in runs])
    out["images_per_s_runs"] = [r["images_per_s"] for r in runs]
    out["step_s"] = _stats([r["step_s"] for r in runs])
    out["others_cores"] = _stats([r["others_cores"] for r in runs])
    if anchor_runs:
        per_run = [r["images_per_s"] / a["images_per_s"] for r, a in zip(runs, anchor_runs)]
        anchor = statistics.median(a["images_per_s"] for a in anchor_runs)
        out["ratio_to_c"] = dict(
            of_medians=out["images_per_s"]["median"] / anchor, **_stats(per_run)
        )
    ranks = []
    for i in range(len(first["ranks"])):
        rs = [r["ranks"][i] for r in runs]
        entry: dict = dict(rank=i, params=rs[0]["params"], threads=rs[0]["threads"])
        for key in ("saved_peak_bytes", "rss_growth_bytes", "rss_peak_bytes", "rss_base_bytes"):
            entry[key] = _stats([r[key] for r in rs])
        entry["rss_peak_timed_only"] = all(r["rss_peak_timed_only"] for r in rs)
        for key in (
            "allreduce_s_per_step",
            "blocked_s_per_step",
            "compute_s_per_step",
            "bare_message_s",
            "cpu_s_per_step",
            "cpu_share",
        ):
            if key in rs[0]:
                entry[key] = _stats([r[key] for r in rs])
        if "waits_s_per_step" in rs[0]:
            names = sorted({k for r in rs for k in r["waits_s_per_step"]})
            entry["waits_s_per_step"] = {
                k: _stats([r["waits_s_per_step"].get(k, 0.0) for r in rs]) for k in names
            }
        ranks.append(entry)
    out["ranks"] = ranks
    return out


def _mib(x: float) -> str:
    return f"{x / 2**20:.0f}"


def _per_rank(row: dict, key: str) -> str:
    return "/".join(_mib(r[key]["median"]) for r in row["ranks"])


def _max_rank(row: dict, key: str) -> float:
    return max(r[key]["median"] for r in row["ranks"])


def table(rows: list[dict]) -> str:
    head = (
        "| net | row | procs x threads | images/s median [min-max] | x (c) [min-max] | "
        "saved peak MiB r0/r1 | RSS growth MiB r0/r1 | params r0/r1 | cut | CPU share r0/r1 | "
        "others' cores |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ips = r["images_per_s"]
        ratio = r.get("ratio_to_c")
        ratio_s = (
            f"{ratio['of_medians']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]" if ratio else ""
        )
        cut = ""
        if r["kind"] == "local_pipe":
            cut = "modules " + " ".join(f"[{a},{b})" for a, b in r["bounds"])
        elif r["kind"] == "e2e_pipe":
            cut = f"block {r['cut_block']} of {r['num_blocks']}"
        params = "/".join(f"{x['params'] / 1e6:.2f}M" for x in r["ranks"])
        lines.append(
            f"| {r['net']} | {r['name']} | {r['procs']} x 1 | {ips['median']:.1f} "
            f"[{ips['min']:.1f}-{ips['max']:.1f}] | {ratio_s} | {_per_rank(r, 'saved_peak_bytes')} "
            f"| {_per_rank(r, 'rss_growth_bytes')} | {params} | {cut} | "
            + "/".join(f"{x['cpu_share']['median']:.2f}" for x in r["ranks"])
            + f" | {r['others_cores']['median']:.2f} [{r['others_cores']['min']:.2f}-"
            f"{r['others_cores']['max']:.2f}] |"
        )
    return "\n".join(lines)


def wait_table(rows: list[dict]) -> str:
    """(a)'s per-rank seconds per step: compute vs each kind of blocking, and the model."""
    head = (
        "| net | row | rank | step s | compute s | wait upstream s | recv payload s | wait h s | "
        "wait send s | bare msg ms | msg MiB | stage cost/micro s | model step s |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if r["kind"] != "local_pipe":
            continue
        for x in r["ranks"]:
            w = {k: v["median"] for k, v in x.get("waits_s_per_step", {}).items()}
            lines.append(
                f"| {r['net']} | {r['name']} | {x['rank']} | {r['step_s']['median']:.2f} | "
                f"{x['compute_s_per_step']['median']:.2f} | {w.get('wait_upstream', 0):.3f} | "
                f"{w.get('recv_payload', 0):.4f} | {w.get('wait_h', 0):.3f} | "
                f"{w.get('wait_send', 0):.4f} | {1000 * x['bare_message_s']['median']:.2f} | "
                f"{r['message_bytes'] / 2**20:.2f} | "
                f"{r['stage_cost_per_micro_s'][x['rank']]:.3f} | {r['model_step_s']:.2f} |"
            )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    lines = []
    for net in dict.fromkeys(r["net"] for r in rows):
        mine = [r for r in rows if r["net"] == net]
        for method in dict.fromkeys(r["method"] for r in mine if r["case"] == "a"):
            a = [r for r in mine if r["case"] == "a" and r["method"] == method]
            b = next((r for r in mine if r["case"] == "b" and r["method"] == method), None)
            c = next((r for r in mine if r["case"] == "c" and r["method"] == method), None)
            e = [r for r in mine if r["case"] == "e"]
            best = max(a, key=lambda r: r["images_per_s"]["median"])
            best_ips = best["images_per_s"]["median"]
            if c is not None:
                ratio = best_ips / c["images_per_s"]["median"]
                ok = ratio >= 1.7
                lines.append(
                    f"{'PASS' if ok else 'FAIL'} {net} {method}: (a) best M={best['micro']} "
                    f"{best_ips:.1f} images/s = {ratio:.2f}x (c) "
                    f"{c['images_per_s']['median']:.1f} (target >= 1.7x)"
                )
            if e:
                best_e = max(e, key=lambda r: r["images_per_s"]["median"])
                ok = best_ips > best_e["images_per_s"]["median"]
                lines.append(
                    f"{'PASS' if ok else 'FAIL'} {net} {method}: (a) best {best_ips:.1f} images/s "
                    f"vs (e) best {best_e['name']} {best_e['images_per_s']['median']:.1f} "
                    "(target: (a) faster)"
                )
            if b is not None:
                worse = []
                for r in a:
                    for key, what in (("saved_peak_bytes", "saved"), ("rss_growth_bytes", "RSS")):
                        if _max_rank(r, key) >= _max_rank(b, key):
                            worse.append(f"M={r['micro']} {what}")
                detail = ", ".join(
                    f"M={r['micro']} saved {_mib(_max_rank(r, 'saved_peak_bytes'))} RSS "
                    f"{_mib(_max_rank(r, 'rss_growth_bytes'))}"
                    for r in a
                )
                lines.append(
                    f"{'PASS' if not worse else 'FAIL'} {net} {method}: (a) per-rank peak memory "
                    f"(max over ranks, MiB) {detail} vs (b) saved "
                    f"{_mib(_max_rank(b, 'saved_peak_bytes'))} RSS "
                    f"{_mib(_max_rank(b, 'rss_growth_bytes'))} (target: below (b))"
                    + (f"; not below: {', '.join(worse)}" if worse else "")
                )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["net"] for r in rows))
    width = max(len([r for r in rows if r["net"] == n]) for n in nets)
    fig, axes = plt.subplots(
        len(nets), 3, figsize=(max(14, 1.5 * width * 1.6), 4.8 * len(nets)), squeeze=False
    )
    colors = dict(a="tab:green", b="tab:blue", c="tab:gray", d="tab:orange", e="tab:red")
    for n, net in enumerate(nets):
        mine = [r for r in rows if r["net"] == net]
        x = list(range(len(mine)))
        labels = [r["name"].replace(" local", "\nlocal").replace(" P=2", "\nP=2") for r in mine]
        ax = axes[n][0]
        med = [r["images_per_s"]["median"] for r in mine]
        err = [
            [m - r["images_per_s"]["min"] for m, r in zip(med, mine)],
            [r["images_per_s"]["max"] - m for m, r in zip(med, mine)],
        ]
        ax.bar(x, med, 0.6, yerr=err, capsize=3, color=[colors[r["case"]] for r in mine])
        for j, (m, r) in enumerate(zip(med, mine)):
            ratio = r.get("ratio_to_c")
            text = f"{m:.1f}" + (f"\n{ratio['of_medians']:.2f}x" if ratio else "")
            ax.annotate(text, (j, m), ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("images/s (median, min-max)")
        ax.set_title(f"{net} K={mine[0]['k']}, batch {mine[0]['batch']}: throughput")
        for col, (key, title) in enumerate(
            (
                ("saved_peak_bytes", "peak saved for backward per rank (MiB)"),
                ("rss_growth_bytes", "peak RSS growth per rank (MiB)"),
            ),
            start=1,
        ):
            ax = axes[n][col]
            bw = 0.38
            for rank in (0, 1):
                xs, hs = [], []
                for j, r in enumerate(mine):
                    if rank < len(r["ranks"]):
                        xs.append(j + (rank - 0.5) * bw if r["procs"] > 1 else j)
                        hs.append(r["ranks"][rank][key]["median"] / 2**20)
                ax.bar(
                    xs,
                    hs,
                    bw,
                    color=["tab:cyan", "tab:purple"][rank],
                    label=f"rank {rank}",
                )
            ax.set_title(f"{net}: {title}")
            ax.legend(fontsize=7)
        for ax in axes[n]:
            ax.set_xticks(x, labels)
            ax.tick_params(axis="x", rotation=70, labelsize=7)
    fig.suptitle("2 CPU cores: 2 processes x 1 thread ((c): 1 x 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--depths", default="110,32", help="CIFAR ResNet depths (6n+2)")
    p.add_argument("--k", type=int, help="K for every depth (default: 110 -> 55, 32 -> 16)")
    p.add_argument("--methods", default="dgl_hpff", help="local methods, comma-separated")
    p.add_argument("--micro-batches", default="4,8,16", help="M of (a) and (e), comma-separated")
    p.add_argument("--batch", type=int, default=128, help="global batch per optimizer step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument(
        "--warmup", type=int, default=1, help="warm-up steps (>= 1; the last is metered)"
    )
    p.add_argument("--repeat", type=int, default=1, help="fresh-process repeats of every row")
    p.add_argument("--cost-repeats", type=int, default=3, help="timed runs of the cost probes")
    p.add_argument("--out-dir", default="docs/bench")
    p.add_argument("--row-timeout", type=int, default=3600)
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.warmup < 1 or args.steps < 1 or args.repeat < 1:
        p.error("--warmup, --steps and --repeat must be >= 1")
    if args.batch % 2:
        p.error("--batch must be even (data parallel rows split it in two)")
    rows = plan_rows(args)
    runs: list[list[dict]] = [[] for _ in rows]
    start = time.perf_counter()
    for rep in range(args.repeat):
        for i, row in enumerate(rows):
            t0 = time.perf_counter()
            result = run_row(row, args)
            runs[i].append(result)
            print(
                f"[pipeline] repeat {rep + 1}/{args.repeat} {row['net']} {row['name']}: "
                f"{result['images_per_s']:.1f} images/s ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    combined = []
    for row, row_runs in zip(rows, runs):
        anchor = next(
            (
                rr
                for r, rr in zip(rows, runs)
                if r["case"] == "c"
                and r["net"] == row["net"]
                and (r["method"] == row["method"] or row["method"] == "e2e")
            ),
            None,
        )
        combined.append(combine(row_runs, anchor))
    checks = targets(combined)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = dict(
        command=" ".join(["python", "tools/benchmark_pipeline.py", *sys.argv[1:]]),
        machine=dict(cpus=os.cpu_count(), threads_per_process=1),
        wall_s=time.perf_counter() - start,
        rows=combined,
        targets=checks,
        runs=[dict(name=r["name"], net=r["net"], runs=rr) for r, rr in zip(rows, runs)],
    )
    (out_dir / "pipeline_cpu.json").write_text(json.dumps(report, indent=1))
    plot(combined, out_dir / "pipeline_cpu.png")
    print(table(combined))
    print()
    print(wait_table(combined))
    print()
    print("\n".join(checks))


if __name__ == "__main__":
    main()
