"""Every `filterlens` command the documents show runs, as a reader would run it (issue 31, item 7).

The documents: README.md, docs/*.md, checkpoints/converged/README.md and the leading comments of
configs/**/*.toml. Their commands:
- in a Markdown file, the lines of the fenced code blocks marked ```sh, ```bash or nothing whose first
  word is `filterlens` (a line ending in `\\` continues on the next; `# ...` is a comment). Lines that
  launch filterlens through another program are not taken: the `torchrun --nproc-per-node 4|8 -m
  filterlens ...` of the README and of the ImageNet configs need 4 or 8 processes and CIFAR-100 or
  ImageNet; tests/test_distributed.py runs filterlens under torchrun;
- in a config, the comment lines before its first setting that read `#   filterlens ...`.

A command is a usage synopsis, not a command, and is left out when one of its words holds `...`, `[`,
`]`, `|`, `<` or `>`, or is a name to fill in written in capitals (`M`, `COPY`, `RUN_DIR`; the value of
`--weights`, a torchvision weight name such as `DEFAULT`, is a value). `SYNOPSES` lists every one left
out, and a test holds the list exact: today one, the `[--jobs N | --shard i/n]` line of
configs/vgg16-cifar100-sweep.toml.

A command that analyses a glyphs checkpoint of many labels (`--checkpoint` on the glyphs data set) cannot be
shrunk: the checkpoint's outputs fix its labels (1,000), and a probe of 1,000 labels needs every one of them in
both splits (about 100,000 rendered training images), minutes of work per stage even at one epoch. `UNSHRINKABLE`
lists them and a test holds that list exact too; their weights are checked by
tests/test_converged_checkpoints.py (they load and recognise a held-out design) and their whole run is the one
docs/results.md reports.

The commands of one document run in document order in one temporary folder (with `configs/` and
`checkpoints/` linked into it, so the documents' relative paths resolve), each through the real CLI
(`conftest.run_cli`: a subprocess without stdin, one thread), so that a later command finds the run
directories the earlier ones made; each must exit 0. Every command is shrunk by one rule (`shrink`):
each of `--epochs 1 --train-samples 256 --test-samples 128 --probe-epochs 1 --bootstrap 5
--random-draws 2 --retrain-epochs 1 --latency-repeats 2 --subsets 1 --warmup-epochs 0 --min-steps 0` is an
upper bound, appended where the subcommand takes the flag and the command does not set it, lowering a larger
number the command sets (`--epochs 0` stays 0); a glyphs command reads 10 labels (`--labels first:10`;
a glyphs sweep label counts `--num-labels 2,3`); `--no-progress` is appended. A document whose commands need
Fashion-MNIST (`--dataset fashion-mnist`, or a config of that dataset) is skipped when the files of
Debian's dataset-fashion-mnist are absent (.ci/run installs them); no other command is skipped.

Time (measured with two workers next to trainings, load 6 to 9): 49 minutes of worker time for the 14
documents, the README's 26 commands 9.6 minutes of it.
"""
from __future__ import annotations

import re
import shlex
import time
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
LINKED = ("configs", "checkpoints")  # linked into each document's working folder

DOCUMENTS = [
    "README.md",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
    "checkpoints/converged/README.md",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.toml")),
]

SHELL_FENCES = {"", "sh", "bash"}
FENCE = re.compile(r"\s*```\s*(\S*)")

# the sizes every documented command is shrunk to (see shrink)
TINY = {"--epochs": 1, "--train-samples": 256, "--test-samples": 128, "--probe-epochs": 1, "--bootstrap": 5,
        "--random-draws": 2, "--retrain-epochs": 1, "--latency-repeats": 2, "--subsets": 1,
        "--warmup-epochs": 0,  # a warm-up must be shorter than the training, here 1 epoch
        "--min-steps": 0}  # no raising of the epochs to a number of steps (3,000 steps of 2 batches: 1,500 epochs)

# the usage synopses the documents hold, by document: each left out by the rule of is_synopsis
SYNOPSES = {
    "configs/vgg16-cifar100-sweep.toml": [
        "filterlens sweep --config configs/vgg16-cifar100-sweep.toml --run-dir runs/sweep-cifar100 "
        "[--jobs N | --shard i/n]"],
}

# the commands that analyse a many-label glyphs checkpoint (see the module docstring), by document
UNSHRINKABLE = {
    "configs/glyphs/glyphs-1000.toml": [
        "filterlens run --config configs/glyphs/glyphs-1000.toml --checkpoint checkpoints/glyphs/glyphs-L1000-s1.pt "
        "--epochs 0 --run-dir runs/glyphs/L1000"],
}


# ------------------------------------------------------------------------------ finding the commands

def _shell_lines(path: Path) -> list[str]:
    """The lines a reader would type from the document: those of its shell code blocks (Markdown) or of
    its leading comment (a TOML config, without the `#`), with continuation lines joined."""
    lines, in_block, shell = [], False, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if path.suffix == ".toml":
            if line.strip() and not line.lstrip().startswith("#"):
                break  # the first setting ends the leading comment
            lines.append(line.lstrip()[1:])
            continue
        fence = FENCE.match(line)
        if fence:
            in_block, shell = (True, fence.group(1) in SHELL_FENCES) if not in_block else (False, False)
        elif in_block and shell:
            lines.append(line)
    joined = "\n".join(lines).replace("\\\n", " ")
    return joined.splitlines()


def documented_commands(path: Path) -> list[list[str]]:
    """The document's `filterlens ...` commands in document order, each as its words (comments removed)."""
    commands = []
    for line in _shell_lines(path):
        if line.split()[:1] == ["filterlens"]:
            commands.append(shlex.split(line, comments=True))
    return commands


def is_synopsis(words: list[str]) -> bool:
    """A usage synopsis, not a command: a word with `...`, `[`, `]`, `|`, `<` or `>`, or a name to fill in
    written in capitals (`M`, `COPY`, `RUN_OR_SWEEP_DIR`), except a weight name given to `--weights`."""
    for before, word in zip([""] + words, words):
        if any(mark in word for mark in ("...", "[", "]", "|", "<", ">")):
            return True
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", word) and before != "--weights":
            return True
    return False


# ------------------------------------------------------------------------------ the shrinking rule

@lru_cache(maxsize=None)
def subcommand_flags(subcommand: str) -> frozenset[str]:
    """The option strings `filterlens SUBCOMMAND` takes (its --help), read from the CLI's own parser."""
    from filterlens.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.choices and subcommand in a.choices)
    return frozenset(subparsers.choices[subcommand]._option_string_actions)


def shrink(words: list[str]) -> list[str]:
    """THE rule that makes a documented command tiny: each of `--epochs 1 --train-samples 256
    --test-samples 128 --probe-epochs 1 --bootstrap 5 --random-draws 2 --retrain-epochs 1
    --latency-repeats 2 --subsets 1 --warmup-epochs 0 --min-steps 0` is made an upper bound, where the subcommand takes
    the flag (its --help): appended when the command does not set it, lowered to it when the command sets
    a larger number, kept when the command sets a smaller one (`--epochs 0` stays 0) or something that is
    not a number (the CLI judges it); a command on the glyphs data set (3,755 labels to render) reads
    `--labels first:10`, a glyphs sweep `--num-labels 2,3`; and `--no-progress` is
    appended unless the command chooses. Nothing else changes: a value a config file sets is overridden by
    the flag, as for any user."""
    flags = subcommand_flags(words[1])
    words = list(words)
    if _dataset_of(words) == "glyphs":  # a sweep draws its own label subsets: label counts 2 and 3
        flag, few = ("--num-labels", "2,3") if words[1] == "sweep" else ("--labels", "first:10")
        if flag in flags and flag not in words:
            words += [flag, few]
    for flag, tiny in TINY.items():
        if flag not in flags:
            continue
        for i, word in enumerate(words):
            if word == flag and i + 1 < len(words):  # --flag VALUE
                words[i + 1] = _at_most(words[i + 1], tiny)
                break
            if word.startswith(flag + "="):  # --flag=VALUE
                words[i] = f"{flag}={_at_most(word.split('=', 1)[1], tiny)}"
                break
        else:
            words += [flag, str(tiny)]
    if "--no-progress" in flags and not {"--progress", "--no-progress"} & set(words):
        words.append("--no-progress")
    return words


def _at_most(value: str, tiny: int) -> str:
    try:
        return str(tiny) if float(value) > tiny else value
    except ValueError:
        return value


# ------------------------------------------------------------------------------ the tests

def _dataset_of(words: list[str]) -> str | None:
    """The data set a command names: its `--dataset`, else that of a config file it names."""
    from filterlens.cli import load_toml
    from filterlens.config import Config

    for before, word in zip([""] + words, words):
        if before == "--dataset":
            return word
        if word.startswith("--dataset="):
            return word.split("=", 1)[1]
    for word in words:
        if word.endswith(".toml") and (REPO / word).is_file():
            return Config.from_dict(load_toml(REPO / word), source=word).dataset
    return None


def _needs_fashion_mnist(commands: list[list[str]]) -> bool:
    """Whether a command names Fashion-MNIST: `--dataset fashion-mnist`, or a config file of that dataset."""
    return any(_dataset_of(words) == "fashion-mnist" for words in commands)


def test_the_documents_show_commands():
    """The parser finds the commands (a parser that found none would make the test below pass vacuously),
    continuation lines included, and the synopses it leaves out are exactly those listed in SYNOPSES."""
    found = {doc: documented_commands(REPO / doc) for doc in DOCUMENTS}
    assert len(found["README.md"]) >= 15 and found["docs/results.md"] and found["checkpoints/converged/README.md"]
    assert any("--checkpoint" in words for words in found["checkpoints/converged/README.md"])  # a continued line
    synopses = {doc: [" ".join(w) for w in commands if is_synopsis(w)] for doc, commands in found.items()}
    assert {doc: s for doc, s in synopses.items() if s} == SYNOPSES
    large = {doc: [" ".join(w) for w in commands if is_unshrinkable(w)] for doc, commands in found.items()}
    assert {doc: s for doc, s in large.items() if s} == UNSHRINKABLE


def test_synopsis_and_shrink_rules():
    assert is_synopsis(["filterlens", "compare", "RUN_OR_SWEEP_DIR...", "--out", "DIR"])
    assert is_synopsis(["filterlens", "layers", "--model", "M", "--dataset", "D"])
    assert not is_synopsis(["filterlens", "train", "--model", "vgg16_imagenet", "--weights", "DEFAULT",
                            "--run-dir", "runs/x"])
    small = shrink(["filterlens", "run", "c.toml", "--epochs", "0", "--bootstrap=200", "--subsets", "x"])
    assert small[:7] == ["filterlens", "run", "c.toml", "--epochs", "0", "--bootstrap=5", "--subsets"]
    assert small[7] == "x" and "--epochs" not in small[8:] and "--bootstrap" not in small[8:]
    assert small[8:10] == ["--train-samples", "256"] and small[-1] == "--no-progress"
    assert shrink(["filterlens", "sweep", "--train-samples", "100", "--probe-epochs", "10"])[2:6] == [
        "--train-samples", "100", "--probe-epochs", "1"]
    assert shrink(["filterlens", "report", "runs/x"]) == ["filterlens", "report", "runs/x"]
    assert shrink(["filterlens", "afcc", "--run-dir", "r"])[4:] == [
        "--random-draws", "2", "--retrain-epochs", "1", "--latency-repeats", "2", "--no-progress"]
    glyphs = shrink(["filterlens", "sweep", "--config", "configs/glyphs/glyphs-sweep.toml"])
    assert glyphs[4:6] == ["--num-labels", "2,3"] and "--labels" not in glyphs
    assert "--labels" not in shrink(["filterlens", "sweep", "--dataset", "digits"])
    assert "--warmup-epochs" in shrink(["filterlens", "train", "--dataset", "digits"])


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def is_unshrinkable(words: list[str]) -> bool:
    """A command on a glyphs checkpoint, whose outputs fix its labels (see the module docstring)."""
    return _dataset_of(words) == "glyphs" and any(w == "--checkpoint" or w.startswith("--checkpoint=") for w in words)


def runnable_commands(document: str) -> list[list[str]]:
    return [words for words in documented_commands(REPO / document)
            if not is_synopsis(words) and not is_unshrinkable(words)]


@pytest.mark.slow
@pytest.mark.parametrize("document", [doc for doc in DOCUMENTS if runnable_commands(doc)])
def test_documented_commands_run(document, tmp_path):
    commands = runnable_commands(document)
    if _needs_fashion_mnist(commands) and not FASHION.exists():
        pytest.skip(f"{document}: its commands need Fashion-MNIST ({FASHION} absent: Debian's dataset-fashion-mnist)")
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    for number, words in enumerate(commands, 1):
        small = shrink(words)
        start = time.perf_counter()
        rc, out, err = run_cli(*small[1:], cwd=tmp_path, timeout=600)
        print(f"{time.perf_counter() - start:6.1f} s  {shlex.join(small)}")  # shown by pytest -s or on failure
        assert rc == 0, (
            f"{document}: command {number} of {len(commands)} exited {rc}\n"
            f"  as documented: {shlex.join(words)}\n  as run:        {shlex.join(small)}\n"
            f"--- stdout (tail) ---\n{_tail(out)}\n--- stderr (tail) ---\n{_tail(err)}")
