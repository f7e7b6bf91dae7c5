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


CITYSCAPES = REPO / "configs/cityscapes"
SHARD_VARIANTS = sorted(p for p in CITYSCAPES.glob("*.py") if p.stem.endswith(("_wds", "_dali")))


def test_every_cityscapes_experiment_has_both_shard_variants():
    folder = {p.stem for p in CITYSCAPES.glob("*.py")} - {p.stem for p in SHARD_VARIANTS}
    assert {p.stem for p in SHARD_VARIANTS} == {f"{s}_{b}" for s in folder for b in ("wds", "dali")}


@pytest.mark.parametrize("variant", SHARD_VARIANTS, ids=[p.stem for p in SHARD_VARIANTS])
def test_a_shard_variant_differs_from_its_experiment_only_in_the_data(variant):
    """`<experiment>_wds.py` / `_dali.py` repeat no setting of `<experiment>.py` but inherit
    them: everything outside the dataset bases' keys (model, method, schedule, hooks) must
    be equal, so a change to an experiment cannot be missing from its shard variants."""
    from mmengine.config import Config

    datasets = REPO / "configs/_base_/datasets"
    data_keys = set()
    for backend in ("folder", "webdataset", "dali"):
        data_keys |= set(Config.fromfile(datasets / f"cityscapes_{backend}.py").keys())
    experiment = variant.with_name(variant.stem.rsplit("_", 1)[0] + ".py")
    ours, reference = Config.fromfile(variant), Config.fromfile(experiment)
    assert set(ours.keys()) - data_keys == set(reference.keys()) - data_keys
    for key in set(reference.keys()) - data_keys:
        assert ours[key] == reference[key], key
