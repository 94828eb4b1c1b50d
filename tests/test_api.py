"""The Python door (issue 23): ``filterlens.analyze`` on any nn.Module and any data, ``filterlens.afcc.apply`` in
memory, notebook displays, ``Analysis.save``, and a user's own architecture on the command line
(``--model path/to/file.py:factory``).

One small model and one small image set go in every way the API takes them (TensorDatasets, DataLoaders, NumPy
arrays, a torchvision ImageFolder) and through the command line (the same images as a class-per-folder tree,
the model by reference and its weights as a checkpoint): the layer accuracies and unit matrices must agree."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import filterlens
from conftest import as_filterlens_runs, run_cli
from filterlens.errors import FilterlensError

SIZE = 16
LABELS = ["circle", "cross", "stripe"]
FACTORY = textwrap.dedent("""
    import torch.nn as nn

    def make(num_labels=3, in_channels=3):
        return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(48, num_labels))

    def not_a_model():
        return 42

    def broken():
        raise RuntimeError("no GPU here")

    NUMBER = 7
""")
SETTINGS = dict(probe_epochs=3, heatmaps="none", bootstrap=0, top_images=3, progress=False, seed=0)


def _pattern(label: int, rng) -> np.ndarray:
    """A 3-channel picture of its label (a disc, a cross or stripes), shifted and noised."""
    yy, xx = np.mgrid[:24, :24]
    cy, cx = rng.integers(8, 16, 2)
    if label == 0:
        img = ((yy - cy) ** 2 + (xx - cx) ** 2 < 30).astype(float)
    elif label == 1:
        img = ((abs(yy - cy) < 2) | (abs(xx - cx) < 2)).astype(float)
    else:
        img = ((yy + int(cx)) % 6 < 3).astype(float)
    rgb = np.stack([img, img * 0.5, 1 - img]) * 200 + rng.normal(0, 20, (3, 24, 24))
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The image folder, the torchvision datasets read from it, the factory file, the model and its checkpoint."""
    from PIL import Image
    from torchvision import datasets
    from torchvision import transforms as T

    root = tmp_path_factory.mktemp("api")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 16)):
        for k, name in enumerate(LABELS):
            (root / "images" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_pattern(k, rng).transpose(1, 2, 0)).save(root / "images" / split / name / f"{i}.png")
    # the command line's folder pipeline, written out from its documentation: resize to size*256/224, centre crop,
    # to tensor, ImageNet normalisation
    tf = T.Compose([T.Resize(round(SIZE * 256 / 224)), T.CenterCrop(SIZE), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train = datasets.ImageFolder(root / "images" / "train", transform=tf)
    test = datasets.ImageFolder(root / "images" / "val", transform=tf)
    (root / "zoo.py").write_text(FACTORY)
    torch.manual_seed(0)
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_for_test", root / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    model = zoo.make(3, 3)
    with torch.no_grad():  # a little training so that the layers have something to show
        xs = torch.stack([x for x, _ in train])
        ys = torch.tensor(train.targets)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(15):
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(model(xs), ys)
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "weights.pt")
    return {"root": root, "train": train, "test": test, "model": model, "zoo": root / "zoo.py"}


def _tensors(ds):
    return torch.stack([x for x, _ in ds]), torch.tensor([y for _, y in ds])


@pytest.fixture(scope="module")
def analyses(world):
    """The same model and data through every door of filterlens.analyze."""
    from torch.utils.data import DataLoader, TensorDataset

    (xtr, ytr), (xte, yte) = _tensors(world["train"]), _tensors(world["test"])
    m = world["model"]
    out = {
        "torchvision": filterlens.analyze(m, world["train"], world["test"], **SETTINGS),
        "tensordataset": filterlens.analyze(m, TensorDataset(xtr, ytr), TensorDataset(xte, yte), labels=LABELS,
                                            **SETTINGS),
        "dataloader": filterlens.analyze(m, DataLoader(TensorDataset(xtr, ytr), batch_size=7, shuffle=True),
                                         DataLoader(TensorDataset(xte, yte), batch_size=5), labels=LABELS, **SETTINGS),
        "numpy": filterlens.analyze(m, (xtr.numpy(), ytr.numpy()), (xte.numpy(), yte.numpy()), labels=LABELS,
                                    **SETTINGS),
    }
    return out


@pytest.fixture(scope="module")
def cli_run(world):
    """The same through the command line: the images as an image folder, the model by reference."""
    run = world["root"] / "cli-run"
    rc, out, err = run_cli("train", "--run-dir", run, "--dataset", "imagefolder",
                           "--data-dir", world["root"] / "images",
                           "--image-size", SIZE, "--model", f"{world['zoo']}:make", "--checkpoint",
                           world["root"] / "weights.pt", "--epochs", 0, "--seed", 0, "--no-progress", cwd=world["root"])
    assert rc == 0, err
    rc, out, err = run_cli("analyze", "--run-dir", run, "--probe-epochs", 3, "--heatmaps", "none", "--top-images", 3,
                           "--no-progress", cwd=world["root"])
    assert rc == 0, err
    return run


def test_every_door_gives_the_same_layers_and_unit_matrices(analyses, cli_run):
    ref = analyses["torchvision"]
    assert [r["layer"] for r in ref.layers] == ["0", "3", "4"]  # an nn.Sequential: its children that give maps
    assert ref.meta["label_names"] == LABELS
    cli = filterlens.load_run(cli_run)
    for name, other in list(analyses.items()) + [("command line", None)]:
        rows = other.layers if other is not None else cli.results["layers"]  # full precision (CSV: 6 digits)
        for a, b in zip(ref.layers, rows):
            assert str(b["layer"]) == a["layer"], name
            assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-9), (name, a["layer"])
            assert b["noise_per_filter_all"] == pytest.approx(a["noise_per_filter_all"], abs=1e-4), name
        for layer, unit in (("0", 3), ("4", 11)):
            got = other.unit(layer, unit) if other is not None else cli.unit(layer, unit)
            want = ref.unit(layer, unit)
            np.testing.assert_allclose(got.matrix, want.matrix, rtol=1e-5, atol=1e-6, err_msg=name)
            assert got.clusters == want.clusters, name
    assert analyses["tensordataset"].meta["data"]["input_shape"] == [3, SIZE, SIZE]


def test_unit_matrix_is_the_silenced_fc_on_the_test_images(analyses, world):
    """An independent check of one door: a unit's matrix is the mean, over the test images of each label, of the
    probe's fields from that unit alone (every other weight silenced), computed here by brute force."""
    a = analyses["numpy"]
    w = a.probes.layer("4").weight  # (L, C, H, W)
    captured = {}
    handle = world["model"][4].register_forward_hook(lambda m, i, o: captured.setdefault("x", o.detach().clone()))
    with as_filterlens_runs(world["model"]) as p:  # the maps as the capture computes them
        world["model"](p.batch(_tensors(world["test"])[0]))
    handle.remove()
    x, y = captured["x"], _tensors(world["test"])[1]
    fields = torch.einsum("jhw,nhw->nj", w[:, 11].double(), x[:, 11].double())
    brute = torch.stack([fields[y == i].mean(0) for i in range(3)]).numpy()
    np.testing.assert_allclose(a.unit("4", 11).matrix, brute, rtol=1e-4, atol=1e-6)


def test_afcc_apply_in_memory_equals_the_command_line(analyses, cli_run, world):
    settings = dict(retrain_epochs=1, random_draws=2, afcc_thresholds="0.3", latency_repeats=2)
    res = filterlens.afcc.apply(world["model"], analyses["torchvision"], **settings)
    rc, out, err = run_cli("afcc", "--run-dir", cli_run, "--retrain-epochs", 1, "--random-draws", 2, "--thresholds",
                           "0.3", "--latency-repeats", 2, "--no-progress", cwd=world["root"])
    assert rc == 0, err
    saved = json.loads((cli_run / "results.json").read_text())["afcc"]
    assert saved["layers"] == res.layers == ["4"]
    for key in ("before", "masked", "retrained", "random_masked", "random_retrained"):
        assert saved["accuracy"][key] == pytest.approx(res.accuracy[key], abs=1e-9), key
    assert saved["dilution_total"] == pytest.approx(res.dilution_total)
    assert [r["kept"] for r in saved["masked"]] == [r["kept"] for r in res.rows()]
    # the user's model is untouched and the masked network really has its masked weights at zero
    for m in res.masks:
        w = res.model.get_parameter(m.param).detach()
        assert bool((w.reshape(m.mask.shape)[~m.mask] == 0).all())
    assert "<table>" in res._repr_html_() and "AFCC" in res._repr_html_()
    assert type(res.plot()).__name__ == "Figure"


def test_notebook_displays_and_figures(analyses):
    a = analyses["torchvision"]
    html = a._repr_html_()
    layers_table, claims_table = html.split("</table>")[:2]
    assert layers_table.count("<tr>") == len(a.layers) + 1 and ">4<" in layers_table
    assert claims_table.count("<tr>") == len(a.claims) + 1 and "accuracy" in claims_table and a.claims
    figs = a.plot()
    assert sorted(figs) == ["accuracy.png", "clusters.png"]
    assert all(type(f).__name__ == "Figure" for f in figs.values())
    u = a.unit("4", 2)
    assert "cluster" in u._repr_html_() and type(u.plot()).__name__ == "Figure"
    assert a.to_frame().shape[0] == len(a.layers)


def test_saved_analysis_is_a_run_directory_the_commands_read(analyses, tmp_path):
    d = tmp_path / "mine"
    files = analyses["numpy"].save(d)
    assert {"layers.csv", "filters.csv", "results.json", "probes.pt", "thumbnails.json"} <= set(files) | {"probes.pt"}
    rc, out, err = run_cli("report", d, cwd=tmp_path)
    assert rc == 0, err
    page = (d / "report.html").read_text()
    assert "Sequential on your data" in page and "data:image/" in page  # the thumbnails travelled with the analysis
    rc, out, err = run_cli("compare", d, "--out", tmp_path / "cmp", cwd=tmp_path)
    assert rc == 0, err
    rc, out, err = run_cli("afcc", "--run-dir", d, "--no-progress", cwd=tmp_path)
    assert rc == 2 and "filterlens.afcc.apply(model, analysis)" in err and "Traceback" not in err
    back = filterlens.load_run(d)
    assert [r["accuracy"] for r in back.layers] == pytest.approx([r["accuracy"] for r in analyses["numpy"].layers])
    from filterlens.analysis import Analysis

    loaded = Analysis.load(d)
    np.testing.assert_allclose(loaded.unit("4", 1).matrix, analyses["numpy"].unit("4", 1).matrix)


def test_own_architecture_trains_analyses_resumes_and_reports(world, tmp_path):
    cfg = tmp_path / "mine.toml"
    cfg.write_text(textwrap.dedent(f"""
        [data]
        dataset = "digits"
        [model]
        model = "{world['zoo']}:make"
        [train]
        epochs = 2
        [probes]
        probe_epochs = 2
        [afcc]
        afcc = false
        """))
    run = tmp_path / "run"
    rc, out, err = run_cli("run", cfg, "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["model"] == f"{world['zoo']}:make"
    assert (run / "report.html").exists() and "== stage train" in out
    rc, out, err = run_cli("run", cfg, "--run-dir", run, "--no-progress", cwd=tmp_path)
    assert rc == 0 and "nothing read or written" in out, out + err
    rc, out, err = run_cli("run", cfg, "--run-dir", run, "--from", "sfp", "--no-progress", cwd=tmp_path)
    assert rc == 0 and "== stage train" not in out and "== stage sfp" in out, out + err


@pytest.mark.parametrize("ref, needle", [
    ("{dir}/nosuch.py:make", "does not exist"),
    ("{zoo}:nosuch", "has no attribute 'nosuch'"),
    ("{zoo}:NUMBER", "not a callable"),
    ("{zoo}:not_a_model", "returned a int, not a torch.nn.Module"),
    ("{zoo}:broken", "raised RuntimeError: no GPU here"),
    ("no_such_package_xyz.models:make", "cannot be imported"),
    ("{dir}/zoo.txt:make", "not a Python file"),
])
def test_bad_model_reference_is_one_line_exit_2(world, tmp_path, ref, needle):
    (world["root"] / "zoo.txt").write_text("x")
    ref = ref.format(zoo=world["zoo"], dir=world["root"])
    rc, out, err = run_cli("train", "--run-dir", tmp_path / "r", "--dataset", "digits", "--model", ref, "--epochs", 1,
                           "--no-progress", cwd=tmp_path)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # refused before any work


class _Iterable(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 4, 4), 0


class _PIL(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        from PIL import Image

        return Image.new("RGB", (4, 4)), i


class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"pixels": torch.zeros(3, 4, 4), "target": i}


def _bad_cases(world):
    m = world["model"]
    x, y = _tensors(world["test"])
    ok = (x, y)
    return [
        (lambda: filterlens.analyze("resnet18", ok, ok), "give a torch.nn.Module"),
        (lambda: filterlens.analyze(nn.ReLU(), ok, ok), "no parameters"),
        (lambda: filterlens.analyze(m, ok), "test data is missing"),
        (lambda: filterlens.analyze(m, "train/", ok), "the train data is a str"),
        (lambda: filterlens.analyze(m, ok, {"x": 1}), "the test data is a dict"),
        (lambda: filterlens.analyze(m, (x[:, 0, 0], y), ok), "expected (N, C, H, W)"),
        (lambda: filterlens.analyze(m, (x, y.float()), ok), "give integers 0..L-1"),
        (lambda: filterlens.analyze(m, (x, y[:-1]), ok), "one integer label per image"),
        (lambda: filterlens.analyze(m, (x, y + 5), ok, labels=LABELS), "train label 5 is outside 0..2"),
        (lambda: filterlens.analyze(m, (x[:, :, :8], y), ok), "both splits must give inputs of one shape"),
        (lambda: filterlens.analyze(m, _Iterable(), ok), "IterableDataset"),
        (lambda: filterlens.analyze(m, _PIL(), ok), "ToTensor"),
        (lambda: filterlens.analyze(m, _Dicts(), ok), "an image key"),
        (lambda: filterlens.analyze(m, ok, ok, probe_epoch=3),
         "unknown setting 'probe_epoch' (did you mean 'probe_epochs'?)"),
        (lambda: filterlens.analyze(m, ok, ok, threshold=2.0), "threshold"),
        (lambda: filterlens.analyze(m, ok, ok, config={"threshold": 0.3}), "give a filterlens.config.Config"),
        (lambda: filterlens.analyze(m, ok, ok, labels="abc"), "list of label names"),
        (lambda: filterlens.analyze(m, ok, ok, labels=["a", "a", "b"]), "names a label twice"),
        (lambda: filterlens.analyze(m, (x, y), (x, torch.zeros_like(y))), "no sample of label"),
        (lambda: filterlens.analyze(m, (x * float("nan"), y), ok), "NaN"),
        (lambda: filterlens.analyze(m, ok, ok, layers="99"), "out of range"),
        (lambda: filterlens.afcc.apply("model", None), "give the torch.nn.Module"),
        (lambda: filterlens.afcc.apply(m, 3), "give what filterlens.analyze returned"),
    ]


def test_bad_python_input_is_one_clear_filterlens_error(world, analyses):
    cases = _bad_cases(world)
    a = analyses["numpy"]
    cases += [
        (lambda: filterlens.afcc.apply(world["model"], a, retrain_epoch=1), "unknown setting 'retrain_epoch'"),
        (lambda: filterlens.afcc.apply(world["model"], a, afcc_layers="0,2"), "are not consecutive"),
        (lambda: a.unit("nosuch", 0), "was not analysed"),
        (lambda: a.unit("4", "3"), "is a str; give an integer"),
        (lambda: a.unit("4", 12), "out of range"),
        (lambda: a.to_frame("neurons"), "unknown table"),
    ]
    assert len(cases) >= 15
    for call, needle in cases:
        with pytest.raises(FilterlensError) as exc:
            call()
        msg = str(exc.value)
        assert needle in msg and "\n" not in msg, (needle, msg)


class _HuggingFaceLike(torch.utils.data.Dataset):
    """Samples as a Hugging Face dataset with ``with_format("torch")`` gives them: dicts, uint8 H x W x C images."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.features = None

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def test_dict_samples_with_channels_last_uint8_images_are_read_as_the_same_images():
    from filterlens.inputs import as_data

    g = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (12, 10, 9, 3), dtype=torch.uint8, generator=g)  # N x H x W x C
    labels = torch.arange(12) % 3
    data = as_data(_HuggingFaceLike(hwc, labels), _HuggingFaceLike(hwc, labels))
    assert data.input_shape == (3, 10, 9) and data.label_names == ["0", "1", "2"]
    x, y = data.test[5]
    torch.testing.assert_close(x, hwc[5].permute(2, 0, 1).float() / 255)  # channels first, scaled, nothing else
    assert y == 2
