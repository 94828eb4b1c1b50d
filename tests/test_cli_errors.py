"""Bad input through the real command line (``python -m filterlens`` in a subprocess).

Each case: exit status 2, exactly one line on stderr starting "filterlens: error:", naming the
bad value, no traceback, and nothing already written damaged. Also: --help lists every flag
with its default, and `filterlens layers` prints VGG-16's 13 layers.
"""
from __future__ import annotations

import argparse
import json
import os
import re

import pytest
import torch

from conftest import TINY_TRAIN_ARGS, assert_user_error, copy_run, make_idx_arrays, write_idx_dataset

TRAIN = ["train", "--no-progress", "--epochs", "1"]
SMALL = ["--train-samples", "64", "--test-samples", "64"]  # where a command may get as far as training


def _train(run_cli, tmp_path, *args):
    return run_cli(*TRAIN, "--run-dir", tmp_path / "run", *args)


# ================================================================================ names

def test_unknown_dataset(run_cli, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "cifar11")
    assert_user_error(rc, out, err, "cifar11", "cifar10", "digits", "fashion-mnist")


def test_unknown_model_suggests_the_closest(run_cli, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_smal")
    assert_user_error(rc, out, err, "vgg_smal", "did you mean 'vgg_small'")


def test_layers_unknown_model_and_dataset(run_cli):
    rc, out, err = run_cli("layers", "--model", "resnet81")
    assert_user_error(rc, out, err, "resnet81")
    rc, out, err = run_cli("layers", "--dataset", "cifar1000")
    assert_user_error(rc, out, err, "cifar1000")


# ================================================================================ data

def test_missing_data_directory(run_cli, tmp_path):
    missing = tmp_path / "no-such-folder"
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "mnist", "--data-dir", missing)
    assert_user_error(rc, out, err, str(missing))


def test_fashion_mnist_dir_without_files_names_them_and_the_debian_package(run_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "fashion-mnist", "--data-dir", empty)
    assert_user_error(rc, out, err, str(empty), "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                      "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "dataset-fashion-mnist")


def test_fashion_mnist_missing_debian_dir_names_the_package(run_cli, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "fashion-mnist", "--data-dir", tmp_path / "gone")
    assert_user_error(rc, out, err, "gone", "dataset-fashion-mnist")


def test_cifar_dir_without_files(run_cli, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "cifar10", "--data-dir", tmp_path)
    assert_user_error(rc, out, err, "cifar-10-batches-py", "data_batch_1")


def test_cut_gzip_idx_file(run_cli, tmp_path):
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path / "fm", arrays, gz=True)
    gz = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])  # an interrupted download
    rc, out, err = _train(run_cli, tmp_path, "--dataset", "fashion-mnist", "--data-dir", tmp_path / "fm")
    assert_user_error(rc, out, err, "t10k-images-idx3-ubyte")


# ================================================================================ labels

@pytest.mark.parametrize("spec,needles", [
    ("first:1", ["first:1", "2..10"]),
    ("first:11", ["first:11", "2..10"]),
    ("1,1", ["'1'", "1,1"]),
    ("1,seven", ["seven"]),
])
def test_bad_label_specs(run_cli, tmp_path, spec, needles):
    rc, out, err = _train(run_cli, tmp_path, "--labels", spec)
    assert_user_error(rc, out, err, *needles)


# ================================================================================ checkpoints

def test_checkpoint_that_is_not_a_checkpoint(run_cli, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(2000))
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_tiny", "--checkpoint", junk)
    assert_user_error(rc, out, err, str(junk))
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_tiny", "--checkpoint", tmp_path / "absent.pt")
    assert_user_error(rc, out, err, "absent.pt")


def test_checkpoint_of_another_architecture(run_cli, tiny_run, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_small", "--checkpoint", tiny_run / "model.pt")
    assert_user_error(rc, out, err, "vgg_tiny", "vgg_small")


def test_checkpoint_for_another_label_count(run_cli, tiny_run, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_tiny", "--labels", "first:5",
                          "--checkpoint", tiny_run / "model.pt")
    assert_user_error(rc, out, err, "label count", "10", "5")


def test_plain_state_dict_of_another_architecture(run_cli, tmp_path):
    from filterlens.models import ModelSpec, build_model

    sd = tmp_path / "vgg_small.pt"
    torch.save(build_model(ModelSpec("vgg_small", 10, 1, 8)).state_dict(), sd)
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_tiny", "--checkpoint", sd)
    assert_user_error(rc, out, err, str(sd))


# ================================================================================ run directories

def _bytes(run):
    return {name: (run / name).read_bytes() for name in ("config.json", "model.pt", "train.json", "train_log.csv")}


def test_run_dir_with_another_config_refused_then_overwritten(run_cli, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    before = _bytes(run)
    args = [a if a != "2" else "3" for a in TINY_TRAIN_ARGS]  # --epochs 3 instead of 2
    assert args != TINY_TRAIN_ARGS
    rc, out, err = run_cli("train", *args, "--run-dir", run)
    assert_user_error(rc, out, err, str(run), "--overwrite", "epochs")
    assert _bytes(run) == before, "a refused command changed the run directory"

    rc, out, err = run_cli("train", *args, "--run-dir", run, "--overwrite")
    assert rc == 0, out + err
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert (run / "train_log.csv").read_text().count("\n") == 4  # header + 3 epochs
    assert (run / "model.pt").read_bytes() != before["model.pt"]


def test_run_dir_that_is_a_file(run_cli, tmp_path):
    f = tmp_path / "afile"
    f.write_text("precious")
    rc, out, err = run_cli(*TRAIN, "--run-dir", f)
    assert_user_error(rc, out, err, str(f))
    assert f.read_text() == "precious"


def test_failed_command_does_not_block_the_corrected_one(run_cli, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_cli(*TRAIN, *SMALL, "--dataset", "digits", "--model", "vgg_smal", "--run-dir", run)
    assert_user_error(rc, out, err, "vgg_smal")
    rc, out, err = run_cli(*TRAIN, *SMALL, "--dataset", "digits", "--model", "vgg_tiny", "--run-dir", run)
    assert rc == 0, out + err


def test_bad_input_with_overwrite_keeps_the_old_run(run_cli, tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    before = _bytes(run)
    rc, out, err = run_cli("train", *TINY_TRAIN_ARGS, "--labels", "first:1", "--overwrite", "--run-dir", run)
    assert_user_error(rc, out, err, "first:1")
    assert all((run / n).exists() for n in before), sorted(p.name for p in run.iterdir())
    assert _bytes(run) == before


# ================================================================================ flag values

@pytest.mark.parametrize("args,needles", [
    (["--schedule", "foo"], ["--schedule", "foo"]),
    (["--epochs", "abc"], ["--epochs", "abc"]),
    (["--batch-size", "0"], ["batch_size", "0"]),
    (["--epochs", "-1"], ["epochs", "-1"]),
    (["--device", "tpu9"], ["tpu9"]),
    (["--bogus-flag"], ["--bogus-flag"]),
])
def test_invalid_flag_values(run_cli, tmp_path, args, needles):
    rc, out, err = _train(run_cli, tmp_path, *args)
    assert_user_error(rc, out, err, *needles)
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("args,needles", [
    (["--lr", "-1"], ["lr", "-1"]),
    (["--momentum", "-0.5"], ["momentum", "-0.5"]),
    (["--weight-decay", "-1"], ["weight_decay", "-1"]),
    (["--schedule", "step", "--step-epochs", "0"], ["step_epochs", "0"]),
])
def test_invalid_optimiser_values(run_cli, tmp_path, args, needles):
    rc, out, err = _train(run_cli, tmp_path, "--model", "vgg_tiny", *SMALL, *args)
    assert_user_error(rc, out, err, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(run_cli, tmp_path):
    rc, out, err = _train(run_cli, tmp_path, "--device", "cuda")
    assert_user_error(rc, out, err, "cuda")


def test_no_subcommand_and_missing_run_dir(run_cli):
    rc, out, err = run_cli()
    assert_user_error(rc, out, err)
    rc, out, err = run_cli("train", "--epochs", "1")
    assert_user_error(rc, out, err, "--run-dir")
    rc, out, err = run_cli("trian")
    assert_user_error(rc, out, err, "trian")


# ================================================================================ --help

def _subparser(name):
    from filterlens.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _help_blocks(text: str) -> dict:
    """Map each long flag to the text of its help entry (all of its lines, whitespace squeezed).

    argparse entries start with two spaces and a dash; the option strings end at the first
    run of two spaces; continuation lines are indented further."""
    blocks, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = []
            for flag in re.findall(r"--[\w-]+", line[2:].split("  ")[0]):
                blocks[flag] = current
        elif not line.startswith("   "):
            current = None
        if current is not None:
            current.append(line.strip())
    return {k: " ".join(v) for k, v in blocks.items()}


def _flags(name):
    out = []
    for action in _subparser(name)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs:
            out.append(longs[0])
    return out


@pytest.mark.parametrize("command", ["train", "layers", "analyze", "demo"])
def test_help_lists_every_flag_with_a_default(run_cli, command):
    rc, out, err = run_cli(command, "--help")
    assert rc == 0 and "Traceback" not in out + err
    blocks = _help_blocks(out)
    flags = _flags(command)
    assert len(flags) >= 3
    for flag in flags:
        assert flag in blocks, f"{flag} missing from {command} --help"
        assert "default" in blocks[flag], f"{flag} has no default in {command} --help: {blocks[flag]}"


def test_train_help_states_the_real_defaults(run_cli):
    rc, out, err = run_cli("train", "--help")
    assert rc == 0
    blocks = _help_blocks(out)
    assert "default: 15" in blocks["--epochs"]
    assert "default: 64" in blocks["--batch-size"]
    assert "default: digits" in blocks["--dataset"]
    assert "default: cosine" in blocks["--schedule"]


@pytest.mark.parametrize("command", ["train", "analyze"])
def test_help_states_no_contradicting_default(run_cli, command):
    from dataclasses import fields

    from filterlens.config import Config

    rc, out, err = run_cli(command, "--help")
    assert rc == 0
    blocks = _help_blocks(out)
    bad = []
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if flag not in blocks or f.default is None:
            continue
        if "(default: None)" in blocks[flag] or f"default: {f.default}" not in blocks[flag]:
            bad.append(f"{flag}: {blocks[flag]}")
    assert not bad, "\n".join(bad)


# ================================================================================ layers

def test_layers_vgg16_cifar100_prints_13_layers(run_cli):
    rc, out, err = run_cli("layers", "--model", "vgg16", "--dataset", "cifar100")
    assert rc == 0, out + err
    assert "Traceback" not in out + err
    rows = [l.split() for l in out.splitlines() if re.match(r"^\s*\d+\s+\S", l)]
    assert len(rows) == 13, out
    assert [int(r[0]) for r in rows] == list(range(13))
    assert [int(r[2]) for r in rows] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(r[3] == "filter" for r in rows)
    sizes = [int(r[6]) for r in rows]  # "C x H x W" after the index, name, units and kind
    assert sizes == [32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2, 1]
    assert "100 labels" in out and "13 layers" in out


def _offline_env(tmp_path):
    """No way out: every HTTP(S) request goes to a closed local port (refused at once), and an empty torch hub."""
    from conftest import cli_env

    return {**cli_env(), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "TORCH_HOME": str(tmp_path / "hub")}


def _run_offline(tmp_path, *args):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "filterlens", *map(str, args)], capture_output=True, text=True,
                       env=_offline_env(tmp_path), stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_pretrained_weights_offline_say_where_to_put_the_file(tmp_path):
    rc, out, err = _run_offline(tmp_path, *TRAIN, "--run-dir", tmp_path / "run", "--dataset", "digits",
                                "--image-size", "32", "--model", "resnet18", "--weights", "DEFAULT")
    line = assert_user_error(rc, out, err, "resnet18", "could not be loaded", "download https://",
                             str(tmp_path / "hub"))
    assert "resnet18-" in line and not (tmp_path / "run").exists()


def test_cifar_download_offline_says_what_to_fetch_by_hand(tmp_path):
    rc, out, err = _run_offline(tmp_path, *TRAIN, "--run-dir", tmp_path / "run", "--dataset", "cifar10",
                                "--data-dir", tmp_path / "cifar", "--download")
    assert_user_error(rc, out, err, "downloading cifar10", "failed", "cifar-10-python.tar.gz", "cifar-10-batches-py")
    assert not (tmp_path / "run").exists()
