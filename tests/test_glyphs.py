"""The ``glyphs`` dataset (filterlens.glyphs): GB2312 level-1 characters rendered from installed CJK fonts.

The tests render from three small Debian font packages (installed by .ci/run), linked into a folder of the test's
own that ``$FILTERLENS_FONT_DIRS`` points at: fonts-arphic-gkai00mp and fonts-wqy-microhei (training designs) and
fonts-arphic-gbsn00lp (a held-out design). Expected values come from GB2312 itself (0xB0A1 is 啊 U+554A, the first
level-1 character; 0xD7F9 is 座 U+5EA7, the last), from the fonts the tests chose, or from a second, independent
render; never from the module's own output alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_cli
from filterlens import glyphs
from filterlens.data import load_data
from filterlens.errors import FilterlensError

# file -> (design, split) as DESIGNS and TEST_DESIGNS place them
FONTS = {"/usr/share/fonts/truetype/arphic-gkai00mp/gkai00mp.ttf": ("ar-pl-kaitim-gb", "train"),
         "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc": ("wqy-microhei", "train"),
         "/usr/share/fonts/truetype/arphic-gbsn00lp/gbsn00lp.ttf": ("ar-pl-sungtil-gb", "test")}
PACKAGES = "fonts-arphic-gkai00mp fonts-wqy-microhei fonts-arphic-gbsn00lp"
pytestmark = pytest.mark.skipif(not all(os.path.isfile(f) for f in FONTS),
                                reason=f"the Debian packages {PACKAGES} are not installed (.ci/run installs them)")


def _font_dir(folder: Path, files) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)
    return folder


@pytest.fixture(name="fonts")
def fonts_fixture(tmp_path, monkeypatch):
    """The three test fonts in a folder of this test's own, and the font search pointed at it."""
    folder = _font_dir(tmp_path / "fonts", FONTS)
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """first:5 rendered once into a cache of the module's own."""
    root = tmp_path_factory.mktemp("glyphs")
    folder = _font_dir(root / "fonts", FONTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(glyphs.FONT_DIRS_ENV, str(folder))
        data = load_data("glyphs", root / "cache", "first:5")
    return root, data


def _blocks(cache: Path) -> dict:
    return {p.relative_to(cache): p.read_bytes() for p in sorted(cache.rglob("b*.npy"))}


# ------------------------------------------------------------------------------ labels

def test_labels_are_gb2312_level_one_in_code_order():
    names = glyphs.label_names()
    assert len(names) == 3755 and len(set(names)) == 3755
    assert names[0] == "啊 U+554A" and names[1] == "阿 U+963F"  # 0xB0A1, 0xB0A2
    assert names[-1] == "座 U+5EA7"  # 0xD7F9, the last of level 1
    assert names[94] == "薄 U+8584"  # 0xB1A1: row 0xB1 starts after the 94 characters of row 0xB0
    assert all(0x4E00 <= ord(n[0]) <= 0x9FFF for n in names)  # CJK Unified Ideographs only


def test_label_forms_of_the_command_line_work(five, fonts):
    root, _ = five
    by_name = load_data("glyphs", root / "cache", "阿 U+963F,啊 U+554A")
    assert by_name.label_map == [1, 0] and by_name.label_names == ["阿 U+963F", "啊 U+554A"]
    assert load_data("glyphs", root / "cache", "4,2").label_map == [4, 2]
    picked = load_data("glyphs", root / "cache", "random:3:7")
    expect = sorted(int(i) for i in np.random.default_rng(7).choice(3755, size=3, replace=False))
    assert picked.label_map == expect  # parse_labels' documented draw


# ------------------------------------------------------------------------------ the splits

def test_train_and_test_designs_are_disjoint_and_sized(five):
    _, data = five
    d = data.describe()
    by_split = {s: {f["design"] for f in d["fonts"] if f["split"] == s} for s in ("train", "test")}
    assert by_split == {"train": {"ar-pl-kaitim-gb", "wqy-microhei"}, "test": {"ar-pl-sungtil-gb"}}
    assert not by_split["train"] & by_split["test"]
    assert all(f["design"] not in glyphs.TEST_DESIGNS for f in d["fonts"] if f["split"] == "train")
    for f in d["fonts"]:  # the recorded sha256 is the file's
        assert f["sha256"] == hashlib.sha256(Path(f["file"]).read_bytes()).hexdigest()
    # two training faces: ceil(100 / 2) = 50 copies each, so 100 training images per label
    counts = torch.bincount(data.train.labels, minlength=5)
    assert counts.tolist() == [100] * 5
    assert torch.bincount(data.test.labels, minlength=5).tolist() == [glyphs.TEST_COPIES] * 5
    assert (data.train.images.dtype == torch.uint8
            and tuple(data.train.images.shape[1:]) == (1, glyphs.IMAGE_SIZE, glyphs.IMAGE_SIZE))


def test_test_images_come_from_the_held_out_font(five, fonts):
    _, data = five
    face = glyphs.Face("ar-pl-sungtil-gb", "AR PL SungtiL GB", "Regular",
                       "/usr/share/fonts/truetype/arphic-gbsn00lp/gbsn00lp.ttf", 0, "-")
    again = glyphs.render(face, range(5), glyphs.TEST_COPIES, glyphs.IMAGE_SIZE)
    np.testing.assert_array_equal(data.test.images.numpy().reshape(again.shape), again)


def test_two_renders_give_the_same_bytes(five, fonts, tmp_path):
    root, data = five
    again = load_data("glyphs", tmp_path / "other", "first:5")
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.test.images, data.test.images)
    first, second = _blocks(root / "cache"), _blocks(tmp_path / "other")  # the module's cache holds more blocks
    assert len(second) == 3 and all(first[name] == data for name, data in second.items())
    assert again.describe()["data_key"] == data.describe()["data_key"]


def test_a_subset_has_the_images_of_a_larger_set(five, fonts, tmp_path):
    _, data = five
    sub = load_data("glyphs", tmp_path / "sub", "3,1")  # a cache of its own: rendered afresh
    for new, old in enumerate([3, 1]):
        np.testing.assert_array_equal(sub.train.images[sub.train.labels == new].numpy(),
                                      data.train.images[data.train.labels == old].numpy())
        np.testing.assert_array_equal(sub.test.images[sub.test.labels == new].numpy(),
                                      data.test.images[data.test.labels == old].numpy())
    # and whatever the labels rendered beside it (the renderer itself, across a block boundary)
    face = glyphs.find_faces()[0][0]
    alone = glyphs.render(face, [40], 3, 32)
    among = glyphs.render(face, [2, 40, 3754], 3, 32)
    np.testing.assert_array_equal(alone[0], among[1])
    assert not np.array_equal(among[0], among[1])


def test_image_size_renders_at_that_size(five, fonts):
    root, small = five
    big = load_data("glyphs", root / "cache", "first:2", image_size=48)
    assert tuple(big.train.images.shape[1:]) == (1, 48, 48) and big.image_size == 48
    assert big.train.size is None  # rendered, not resized per batch
    assert big.describe()["data_key"] != small.describe()["data_key"]
    # the ink grows with the area: about (48/side)^2 as much
    ratio = big.train.images[:200].float().sum() / small.train.images[:200].float().sum()
    want = (48 / glyphs.IMAGE_SIZE) ** 2
    assert 0.8 * want < float(ratio) < 1.2 * want


# ------------------------------------------------------------------------------ the cache

def test_a_damaged_cache_file_is_rendered_again(five, fonts, tmp_path, caplog):
    _, data = five
    cache = tmp_path / "c"
    load_data("glyphs", cache, "first:3")
    block = sorted(cache.rglob("b000.npy"))[0]
    good = block.read_bytes()
    block.write_bytes(good[:-10] + b"0123456789")
    with caplog.at_level(logging.WARNING, logger="filterlens"):
        again = load_data("glyphs", cache, "first:5")
    notes = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(notes) == 1 and str(block) in notes[0]
    assert block.read_bytes() == good
    assert torch.equal(again.train.images, data.train.images)


def test_a_folder_of_the_users_is_refused_and_left_alone(fonts, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FilterlensError, match="notes.txt"):
        load_data("glyphs", mine, "first:2")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------ fonts and the data key

def test_missing_fonts_are_one_line_and_exit_2(run_cli, tmp_path, monkeypatch):
    empty = tmp_path / "none"
    empty.mkdir()
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(empty))
    rc, out, err = run_cli("train", "--dataset", "glyphs", "--labels", "first:5", "--model", "vgg_tiny",
                           "--data-dir", tmp_path / "cache", "--run-dir", tmp_path / "run")
    assert_user_error(rc, out, err, "apt-get install", "fonts-noto-cjk", "fonts-arphic-ukai", str(empty))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    # a held-out design alone is not enough either (no training design)
    _font_dir(tmp_path / "one", ["/usr/share/fonts/truetype/arphic-gbsn00lp/gbsn00lp.ttf"])
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(tmp_path / "one"))
    with pytest.raises(FilterlensError, match="training designs: none; held-out designs: ar-pl-sungtil-gb"):
        load_data("glyphs", tmp_path / "cache", "first:5")


def test_other_fonts_give_another_data_key(five, tmp_path, monkeypatch):
    _, data = five
    key = data.describe()["data_key"]
    # the same font files reached through other paths: the same key
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(_font_dir(tmp_path / "same", FONTS)))
    assert glyphs.data_key(glyphs.find_faces()[0], glyphs.IMAGE_SIZE) == key
    # one font file with other bytes (a byte appended: it still reads), the same names
    other = tmp_path / "other"
    _font_dir(other, [f for f in FONTS if "gkai" not in f])
    changed = other / "gkai00mp.ttf"
    changed.write_bytes(Path(next(f for f in FONTS if "gkai" in f)).read_bytes() + b"\0")
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(other))
    faces = glyphs.find_faces()[0]
    assert [(f.design, f.style) for f in faces] == [(f["design"], f["style"]) for f in data.describe()["fonts"]]
    assert glyphs.data_key(faces, glyphs.IMAGE_SIZE) != key
    # one font fewer
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(_font_dir(tmp_path / "fewer", [f for f in FONTS if "wqy" not in f])))
    assert glyphs.data_key(glyphs.find_faces()[0], glyphs.IMAGE_SIZE) != key


def test_a_font_changed_in_place_gives_another_data_key(tmp_path, monkeypatch):
    """The cache's record of the font scan (fonts.json) does not hide a font file rewritten at the same path."""
    folder = _font_dir(tmp_path / "fonts", [f for f in FONTS if "gkai" not in f])
    gkai = next(f for f in FONTS if "gkai" in f)
    shutil.copyfile(gkai, folder / "gkai00mp.ttf")
    monkeypatch.setenv(glyphs.FONT_DIRS_ENV, str(folder))
    first = load_data("glyphs", tmp_path / "cache", "first:2").describe()
    assert (tmp_path / "cache" / glyphs.SCAN_FILE).is_file()
    with open(folder / "gkai00mp.ttf", "ab") as fh:
        fh.write(b"\0")
    second = load_data("glyphs", tmp_path / "cache", "first:2").describe()
    assert second["data_key"] != first["data_key"]
    changed = {f["file"]: f["sha256"] for f in second["fonts"]}[str(folder / "gkai00mp.ttf")]
    assert changed == hashlib.sha256(Path(gkai).read_bytes() + b"\0").hexdigest()


def _fake_run(folder: Path, key: str) -> Path:
    """A finished run as filterlens writes one (results.json version 1, layers.csv), without stages.json."""
    folder.mkdir()
    names = glyphs.label_names()[:5]
    (folder / "results.json").write_text(json.dumps({
        "version": 1, "config": {"model": "vgg_tiny", "dataset": "glyphs"}, "label_names": names,
        "data": {"dataset": "glyphs", "num_labels": 5, "label_names": names, "label_map": list(range(5)),
                 "data_key": key}}))
    (folder / "layers.csv").write_text("layer,accuracy,snr,noise_per_filter,cluster_size,clusters_per_filter,"
                                       "filters_without_cluster\nfeatures.0,0.5,1.0,2.0,1.5,1.0,0.1\n")
    return folder


def test_compare_and_sweep_merge_refuse_a_mix_of_data_keys(tmp_path):
    a, b, c = (_fake_run(tmp_path / n, k) for n, k in (("a", "1111"), ("b", "2222"), ("c", "1111")))
    rc, out, err = run_cli("compare", a, b, "--out", tmp_path / "out", cwd=tmp_path)
    assert_user_error(rc, out, err, "data keys 1111 and 2222", str(a), str(b))
    assert not (tmp_path / "out").exists()
    from filterlens.report import build_compare
    from filterlens.sweep import merge

    assert build_compare([a, c], tmp_path / "out").is_file()  # one data key: compared

    sweep = tmp_path / "sweep"
    tasks = ["L002-s1", "L003-s1"]
    (sweep).mkdir()
    (sweep / "sweep_plan.json").write_text(json.dumps({"tasks": tasks}))
    for t, k in zip(tasks, ("1111", "2222")):
        (sweep / t).mkdir()
        (sweep / t / "task.json").write_text(json.dumps({"num_labels": int(t[1:4]), "subset": 1, "error": 0.5,
                                                         "data_key": k}))
    with pytest.raises(FilterlensError, match="L002-s1 has data key 1111, L003-s1 has 2222"):
        merge(sweep)
    assert sorted(p.name for p in sweep.iterdir()) == ["L002-s1", "L003-s1", "sweep_plan.json"]


# ------------------------------------------------------------------------------ end to end

def test_train_on_glyphs_through_the_cli(fonts, run_cli, tmp_path):
    rc, out, err = run_cli("train", "--dataset", "glyphs", "--labels", "first:5", "--model", "vgg_tiny",
                           "--epochs", "1", "--data-dir", tmp_path / "cache", "--run-dir", tmp_path / "run",
                           "--no-progress")
    assert rc == 0, f"{out}\n{err}"
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    d = summary["data"]
    assert d["dataset"] == "glyphs" and d["label_names"][0] == "啊 U+554A" and d["train_size"] == 500
    assert len(d["data_key"]) == 16 and {f["split"] for f in d["fonts"]} == {"train", "test"}
    assert (tmp_path / "run" / "model.pt").is_file()


def test_character_labels_draw_as_characters(tmp_path):
    """A unit's matrix with glyph label names: matplotlib finds a font for every character (no "missing from
    font" warning, which would mean boxes in the report)."""
    import warnings

    from filterlens.report.plots import label_fonts, plot_filter_matrix

    if len(label_fonts()) < 2:
        pytest.skip("no CJK font family installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_filter_matrix(np.eye(3) + 0.1, 0.3, [[0], [1], [2]], glyphs.label_names()[:3], tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 0
