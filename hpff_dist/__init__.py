"""hpff-dist: hierarchical locally supervised learning with patch feature fusion, at scale."""

from hpff_dist import compat as _compat

_compat.apply_all()

__version__ = "0.1.0"
