"""The committed weights of the converged networks (docs/results.md) load into their configs' architectures,
are the files the README names (sha256), and are trained networks: on the first 1,000 Fashion-MNIST test
images each is far above chance (0.1) and near the accuracy its run recorded on all 10,000."""
import hashlib
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from filterlens.cli import load_toml
from filterlens.config import Config
from filterlens.train import evaluate, load_data_for, make_model

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
CASES = {  # file: (config, sha256 in checkpoints/converged/README.md, test accuracy of the run on 10,000 images)
    "fashion-mnist-vgg16.pt": ("vgg16", "a383cb73755ad2af23d69b1f92fc2abfe0ba7cb3f68c5d3dd3a906f3a0daf81c", 0.9374),
    "fashion-mnist-resnet20.pt": ("resnet20", "11ba52dbd31c93c45d94ca3706707171f890b06ffc51a901a316909793ea439e",
                                  0.9424),
    "fashion-mnist-vit-tiny.pt": ("vit-tiny", "075615bd8069f0c669e765e25161ca8549a722ca9e776c6977f37598592b6525",
                                  0.9218),
    "fashion-mnist-vit-tiny-10ep.pt": ("vit-tiny-nodes",
                                       "5290d2348d11b087fa202eff2e78ec0098b1af00bfa22b7bac1edd0b05021a4c", 0.8764),
    # the same recipes with other seeds (seed 0: a copy of the file above)
    "seeds/fashion-mnist-vgg16-seed0.pt": ("vgg16",
                                           "a383cb73755ad2af23d69b1f92fc2abfe0ba7cb3f68c5d3dd3a906f3a0daf81c", 0.9374),
    "seeds/fashion-mnist-vgg16-seed1.pt": ("vgg16",
                                           "e73880a7e962d359fff395bad8ff50c1b4fc8d13daf182073a488eedab3a03c9", 0.9405),
    "seeds/fashion-mnist-vgg16-seed2.pt": ("vgg16",
                                           "e63a0a3d08b0969dd6f8c890bf059fa5067ea5cb0fb76539fe7b7bb137d1282c", 0.9396),
    "seeds/fashion-mnist-resnet20-seed0.pt": (
        "resnet20", "11ba52dbd31c93c45d94ca3706707171f890b06ffc51a901a316909793ea439e", 0.9424),
    "seeds/fashion-mnist-resnet20-seed1.pt": (
        "resnet20", "36e5fdb9938931d2bdf0eb60ccf3fc62999211130373d8d19612233a18b6b55d", 0.9425),
    "seeds/fashion-mnist-resnet20-seed2.pt": (
        "resnet20", "1cb14d6b4a55c341fd6e3a092db204ef2874fb41bd3646530542413b2a3a38d5", 0.9407),
}


@pytest.mark.parametrize("file", sorted(CASES))
def test_committed_weights_are_the_trained_networks(file):
    path = ROOT / "checkpoints" / "converged" / file
    name, sha, accuracy = CASES[file]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert sha in (ROOT / "checkpoints" / "converged" / "README.md").read_text()
    if not FASHION.exists():
        pytest.skip("Fashion-MNIST files absent (Debian package dataset-fashion-mnist)")
    cfg = Config.from_dict(load_toml(ROOT / "configs" / "converged" / f"fashion-mnist-{name}.toml"))
    cfg = cfg.replace(checkpoint=str(path), epochs=0, test_samples=1000, train_samples=100, device="cpu")
    torch.set_num_threads(1)
    data = load_data_for(cfg)
    model, _ = make_model(cfg, data)
    loader = DataLoader(data.test, batch_size=250)
    measured = evaluate(model, loader, torch.device("cpu"))["accuracy"]
    assert abs(measured - accuracy) < 0.03, (name, measured)


GLYPHS = {  # file: (config, sha256 in checkpoints/glyphs/README.md, its run's held-out accuracy on the four designs)
    "glyphs-L1000-s1.pt": ("glyphs-1000", "b7a05aa78ce6e8f33544836e2e8b430d1ab98d62659fa46ffaabe6842a0037ab", 0.9775),
    "glyphs-L3755.pt": ("glyphs-3755", "6c196ccd6c6f347198571f2541e3902f49a75821063fc334840a3a6efb35f8ca", 0.9844),
}
SUNGTIL = Path("/usr/share/fonts/truetype/arphic-gbsn00lp/gbsn00lp.ttf")  # a held-out design CI installs


@pytest.mark.parametrize("file", sorted(GLYPHS))
def test_the_glyph_networks_are_the_trained_models(file):
    """checkpoints/glyphs/FILE is the file its README names, loads into its config's architecture (VGG-16 at 1/4
    width, one output per label, 20 x 20 grayscale) and recognises the config's characters drawn in a design
    training never saw (AR PL SungtiL GB, one of glyphs.TEST_DESIGNS) far above chance (1 / labels), near the
    accuracy its run measured on all four held-out designs."""
    from filterlens import glyphs
    from filterlens.models import ModelSpec, build_model, load_checkpoint

    name, sha, run_accuracy = GLYPHS[file]
    path = ROOT / "checkpoints" / "glyphs" / file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert sha in (ROOT / "checkpoints" / "glyphs" / "README.md").read_text()
    cfg = Config.from_dict(load_toml(ROOT / "configs" / "glyphs" / f"{name}.toml"))
    labels = list(range(glyphs.NUM_LABELS)) if cfg.labels == "all" else [int(t) for t in cfg.labels.split(",")]
    spec = ModelSpec(cfg.model, len(labels), 1, cfg.image_size or glyphs.IMAGE_SIZE, cfg.width_mult)
    model = build_model(spec)
    load_checkpoint(path, model, spec)
    if not SUNGTIL.exists():
        pytest.skip("fonts-arphic-gbsn00lp is not installed (.ci/run installs it)")
    assert "ar-pl-sungtil-gb" in glyphs.TEST_DESIGNS
    face = glyphs.Face("ar-pl-sungtil-gb", "AR PL SungtiL GB", "Regular", str(SUNGTIL), 0, "-")
    images = torch.as_tensor(glyphs.render(face, labels, 1, spec.image_size))  # (labels, 1, 20, 20) uint8, copy 0
    x = (images.float() / 255.0 - glyphs.MEAN) / glyphs.STD
    torch.set_num_threads(1)
    with torch.no_grad():
        predicted = torch.cat([model.eval()(part).argmax(1) for part in x.split(1000)])
    accuracy = (predicted == torch.arange(len(labels))).float().mean().item()
    assert accuracy > 0.9 and abs(accuracy - run_accuracy) < 0.05, accuracy
