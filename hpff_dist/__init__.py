"""hpff-dist: hierarchical locally supervised learning with patch feature fusion, at scale.

Importing the package does nothing else: the workarounds of ``hpff_dist.compat`` are applied
by the entry points that build runners or models (``build_runner``, the tools), so
``import hpff_dist.local`` stays pure torch and a library user's mmengine stays unpatched.
"""

__version__ = "0.1.0"
