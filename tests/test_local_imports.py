"""``hpff_dist.local`` is pure torch, checked where it matters: what importing it loads."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

# Prints what `import hpff_dist.local` adds to sys.modules on top of torch's own imports (numpy
# is fine only because torch itself loads it, so it is in the baseline).
_CODE = """
import json, sys
import torch
before = set(sys.modules)
import hpff_dist.local
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_local_imports_only_torch_stdlib_and_itself():
    out = subprocess.run(
        [sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-2000:]
    added = json.loads(out.stdout.strip().splitlines()[-1])
    roots = {name.split(".")[0] for name in added}
    foreign = sorted(roots - set(sys.stdlib_module_names) - {"hpff_dist"})
    assert not foreign, f"import hpff_dist.local loads {foreign}"
    ours = sorted(
        m for m in added if m.startswith("hpff_dist.") and not m.startswith("hpff_dist.local")
    )
    assert not ours, f"import hpff_dist.local loads {ours} (data/engine/models code)"
    assert "hpff_dist.local" in added  # the probe imported what it claims
