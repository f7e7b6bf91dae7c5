"""Each workaround in hpff_dist.compat: the test fails if the fix is removed."""

import io
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from hpff_dist import compat

compat.apply_all()  # the fixes under test: `import hpff_dist` applies nothing


def test_mmengine_checkpoint_loads_with_weights_only_default():
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("compat-test")
    hub.update_scalar("train/loss", 0.5)
    hub.update_info("iter", 3)
    buf = io.BytesIO()
    torch.save({"message_hub": hub.state_dict(), "state_dict": {"w": torch.ones(2)}}, buf)
    assert b"getattr" not in buf.getvalue()  # no code-executing globals in our checkpoints
    buf.seek(0)
    loaded = torch.load(buf)  # torch's default: weights_only=True
    assert loaded["message_hub"]["log_scalars"]["train/loss"].current() == 0.5
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))


def test_arbitrary_pickles_are_still_refused():
    buf = io.BytesIO()
    torch.save({"fn": os.getcwd}, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buf)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fix only acts without a GPU")
def test_mmengine_pytorch_launcher_runs_on_cpu():
    # A fresh process: init_process_group cannot be undone cleanly inside pytest.
    code = textwrap.dedent(
        """
        import torch.distributed as dist
        from hpff_dist import compat
        compat.apply_all()
        from mmengine.dist import init_dist
        init_dist('pytorch', backend='gloo')
        print('world', dist.get_world_size(), 'rank', dist.get_rank())
        dist.destroy_process_group()
        """
    )
    env = dict(
        os.environ,
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "world 1 rank 0" in out.stdout


def test_mmengine_deepspeed_strategy_imports_and_onebit_is_explained():
    from mmengine._strategy.deepspeed import register_deepspeed_optimizers

    compat.provide_deepspeed_onebit_module()  # DeepSpeed-only: not part of apply_all

    names = register_deepspeed_optimizers()
    assert "FusedAdam" in names
    from deepspeed.runtime.fp16.onebit import OnebitAdam

    with pytest.raises(RuntimeError, match="removed from DeepSpeed 0.19"):
        OnebitAdam()


def _naive_point_sample(feat: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling written out by hand (align_corners=False, zero padding), float64."""
    n, c, h, w = feat.shape
    out = torch.zeros(n, c, points.shape[1], dtype=torch.float64)
    for b in range(n):
        for p, (px, py) in enumerate(points[b].tolist()):
            x, y = px * w - 0.5, py * h - 0.5
            x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
            for dx in (0, 1):
                for dy in (0, 1):
                    xi, yi = x0 + dx, y0 + dy
                    wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
                    if 0 <= xi < w and 0 <= yi < h:
                        out[b, :, p] += wgt * feat[b, :, yi, xi]
    return out


def test_mmseg_imports_with_mmcv_lite_and_point_sample_is_right():
    import mmseg.models  # noqa: F401  (fails without the stand-in mmcv.ops)
    from mmcv.ops import point_sample

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    points = torch.rand(2, 11, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(point_sample(feat, points), _naive_point_sample(feat, points), atol=1e-12)
    grid = points.view(2, 11, 1, 2)
    assert point_sample(feat, grid).shape == (2, 3, 11, 1)
    assert torch.allclose(
        point_sample(feat, points, align_corners=True),
        F.grid_sample(feat, 2 * grid - 1, align_corners=True).squeeze(3),
    )


def test_other_mmcv_ops_fail_loudly():
    from mmcv.ops import sigmoid_focal_loss

    with pytest.raises(RuntimeError, match="compiled ops"):
        sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))


def test_fixes_are_idempotent():
    before = dict(vars(compat.sys.modules["mmcv.ops"]))
    compat.apply_all()
    assert dict(vars(compat.sys.modules["mmcv.ops"])) == before


def test_second_deepspeed_strategy_in_one_process_registers_optimizers_once():
    import mmengine._strategy.deepspeed as ms_deepspeed

    compat.register_deepspeed_optimizers_once()
    first = ms_deepspeed.register_deepspeed_optimizers()
    second = ms_deepspeed.register_deepspeed_optimizers()  # KeyError without the fix
    assert first == second and "DeepSpeedCPUAdam" in first


def _fresh_python(code: str) -> list[str]:
    """The lines ``code`` prints with ``print('>', ...)`` in a new interpreter (DeepSpeed and
    mmengine print their own lines to stdout too)."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("> ")]


def test_import_hpff_dist_applies_no_fix():
    out = _fresh_python(
        """
        import sys
        import hpff_dist, hpff_dist.registry, hpff_dist.engine.config
        import mmengine.dist.utils as dist_utils
        from mmengine.logging.history_buffer import HistoryBuffer
        print(">", sorted(m for m in ("mmcv", "mmcv.ops", "deepspeed.runtime.fp16.onebit")
                          if m in sys.modules))
        print(">", hasattr(dist_utils._init_dist_pytorch, "__wrapped__"))
        print(">", HistoryBuffer.__getstate__.__module__ == "hpff_dist.compat")
        """
    )
    assert out == ["[]", "False", "False"]


def test_deepspeed_is_imported_only_when_mmengine_uses_it():
    out = _fresh_python(
        """
        import sys
        from hpff_dist.engine.mmengine_runner import FlexibleRunner  # mmengine.runner inside
        import mmengine._strategy.deepspeed as ms_deepspeed
        print(">", "deepspeed" in sys.modules, ms_deepspeed.deepspeed is not None)
        version = ms_deepspeed.deepspeed.__version__  # first use imports DeepSpeed
        print(">", "deepspeed" in sys.modules, ms_deepspeed.deepspeed is sys.modules["deepspeed"])
        """
    )
    assert out == ["False True", "True True"]
