"""DeepSpeed ZeRO under mmengine's FlexibleRunner, exact for several backward calls per step.

Local learning calls backward once per module (and reads input cotangents with
``torch.autograd.grad`` in between) before one optimizer step. DeepSpeed's default *managed*
gradient accumulation treats every ``engine.backward`` as a micro-batch boundary; at ZeRO-1/2
with ``gradient_accumulation_steps=1`` that keeps only the last backward's gradients, with no
error (measured on DeepSpeed 0.19.8, and kept as a regression test). We therefore always run
DeepSpeed with ``"managed_gradient_accumulation": false``: ``engine.backward`` only accumulates
locally (stage 2 reduce-scatters into its partition with accumulation), and ``engine.step`` is
the boundary that reduces what is left and updates. That is exact at ZeRO 0, 1 and 2, fp32 and
bf16. ZeRO-3 is refused: its parameters exist only while the engine's forward hooks gather them,
and the local schedules call blocks directly and backward several times; a second backward
crashed it in our checks (``coalesce_grad_reduction`` does not help there either).

One job per module:

* ``policy``: what DeepSpeed config and optim wrapper we accept and what we fill in (no
  DeepSpeed import);
* ``wrappers``: ``LocalDeepSpeedOptimWrapper`` and ``LocalDeepSpeedEngineWrapper``;
* ``strategy``: ``LocalDeepSpeedStrategy``, which ties them to the process group, the batch
  arithmetic (``hpff_dist.engine.batch``) and the checkpoint checks
  (``hpff_dist.engine.checkpoint``).

This package imports nothing itself: the registries list ``wrappers`` and ``strategy`` in their
``locations``, and DeepSpeed is imported only when a strategy is built.
"""
