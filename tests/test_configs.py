"""Every config in configs/ runs end to end at tiny scale on the CPU, so none of them rots.

Each paper recipe is read exactly as a user would read it (every key validated), then only the
scale is reduced: a few images in the real file format, random weights instead of the pretrained
download, one epoch, one probe epoch, 32x32 inputs for the ImageNet recipes.
"""
import csv
from pathlib import Path

import pytest
import torch

from filterlens.cli import load_toml
from filterlens.config import Config
from filterlens.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(ROOT.rglob("*.toml"))  # the paper recipes and configs/converged/
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_there_are_paper_recipes():
    names = {p.name for p in CONFIGS}
    for want in ("demo.toml", "vgg16-cifar10.toml", "vgg16-cifar100.toml", "efficientnet_b0-cifar100.toml",
                 "vgg16-imagenet.toml", "efficientnet_b0-imagenet.toml"):
        assert want in names


@pytest.mark.parametrize("path", [pytest.param(p, marks=() if p.stem == "demo" else pytest.mark.slow) for p in CONFIGS],
                         ids=[str(p.relative_to(ROOT).with_suffix("")) for p in CONFIGS])
def test_config_runs_at_tiny_scale(path, tmp_path, request):  # the paper recipes: `make test-slow`
    cfg = Config.from_dict(load_toml(path), source=str(path))  # the file as users have it: every key valid
    small = dict(weights=None, epochs=min(cfg.epochs, 1), probe_epochs=1, num_workers=0, device="cpu",
                 progress=False, afcc=False, bootstrap=min(cfg.bootstrap, 10), warmup_epochs=0,
                 num_labels="2,3" if cfg.num_labels else "", subsets=1, min_steps=0)
    if cfg.dataset == "cifar10":
        small["data_dir"] = str(request.getfixturevalue("cifar10_dir")[0])
    elif cfg.dataset == "cifar100":
        small["data_dir"] = str(request.getfixturevalue("cifar100_dir")[0])
    elif cfg.dataset in ("imagenet", "imagefolder"):
        small.update(data_dir=str(request.getfixturevalue("imagefolder_dir")), image_size=32)
    elif cfg.dataset == "glyphs":  # rendered from the fonts installed here, into a folder of this test's; 10 of
        # the 3,755 labels, so that 300 samples hold every label in both splits
        small.update(labels="first:10", train_samples=300, test_samples=300, data_dir=str(tmp_path / "glyphs"))
    elif cfg.dataset == "fashion-mnist":
        if not FASHION.exists():
            pytest.skip("Fashion-MNIST files absent (Debian package dataset-fashion-mnist)")
        small.update(train_samples=300, test_samples=300)
    cfg = cfg.replace(**small)
    torch.set_num_threads(1)
    run_pipeline(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "layers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    assert all(r["snr"] != "" for r in rows)
    assert (tmp_path / "run" / "report.html").exists()
    if cfg.num_labels:  # a label-count study: its models, its fit and its claims
        import json

        sweep = json.loads((tmp_path / "run" / "sweep" / "sweep.json").read_text())
        assert [c["num_labels"] for c in sweep["per_count"]] == [2, 3] and sweep.get("claims")


def test_toml_arrays_read_as_the_strings_the_command_line_takes(tmp_path):
    """A config file may list labels, layers and thresholds as TOML arrays (a 1,000-label subset is unreadable as
    one string); they mean what the comma-separated strings mean, and a bad array is refused in one line."""
    from filterlens.errors import FilterlensError

    arrays, strings = tmp_path / "arrays.toml", tmp_path / "strings.toml"
    arrays.write_text('[data]\nlabels = [1, 3, 4]\n[probes]\nlayers = ["features.0", -1]\n'
                      '[sfp]\nthresholds = [0.2, 0.4]\n')
    strings.write_text('[data]\nlabels = "1,3,4"\n[probes]\nlayers = "features.0,-1"\n'
                       '[sfp]\nthresholds = "0.2,0.4"\n')
    assert Config.from_dict(load_toml(arrays)) == Config.from_dict(load_toml(strings))
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nlabels = [1.5]\n")
    with pytest.raises(FilterlensError, match=r"config file '.*bad.toml': setting 'labels' = \[1.5\]"):
        load_toml(bad)
