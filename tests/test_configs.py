"""Every config in configs/ loads, resolves and builds (on the meta device: no memory, no
init), and builds what it built when its digest was recorded: parameter and buffer names and
shapes, method spec, split plan and levels. A change that alters what a config means shows
up here; when it is meant, regenerate the digests and say why in the commit:
``python tests/config_signature.py tests/data/config_digests.json --digests``."""

from __future__ import annotations

import json

import pytest
from config_signature import REPO, config_files, digest, signature

DIGESTS = json.loads((REPO / "tests/data/config_digests.json").read_text())
CONFIGS = config_files()


def test_every_config_has_a_recorded_digest():
    names = {str(p.relative_to(REPO)) for p in CONFIGS}
    assert names == set(DIGESTS), (
        "new or removed configs: regenerate tests/data/config_digests.json"
    )


@pytest.mark.parametrize(
    "path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS]
)
def test_config_builds_what_it_built(path):
    sig = signature(path)
    assert sig["params"], "a model with no parameters"
    if sig["spec"]["method"] != "e2e" and sig["spec"]["k"] > 1:
        assert len(sig["plan"]) > 1 and sig["levels"], "a local method with one module"
    assert digest(sig) == DIGESTS[str(path.relative_to(REPO))]
