"""The test suites' disk footprint stays that of the tests running now, not the sum of every test.

The slow suite runs every config at tiny scale, and the ImageNet VGG-16 recipes keep full-size weights
(a label-count study writes one model per label subset: 0.5 GB each, 1.6 GB in one test). Under
pytest's default retention every test's folder lives until the session ends, and on CI that sum
filled the disk (stop 38: "No space left on device" from the hostile battery on). pyproject.toml's
``tmp_path_retention_policy = "failed"`` removes a passing test's folder when it ends and keeps a
failing test's for reading.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INNER = '''
from pathlib import Path

def test_passes(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"0" * 1024)
    Path(__file__).with_name("passed.txt").write_text(str(tmp_path))

def test_fails(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"0" * 1024)
    Path(__file__).with_name("failed.txt").write_text(str(tmp_path))
    assert False, "kept for reading"
'''


def test_a_passing_tests_folder_is_removed_when_it_ends_and_a_failing_tests_is_kept(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_inner.py").write_text(INNER)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-c", str(REPO / "pyproject.toml"), "--rootdir", str(suite), "--basetemp", str(tmp_path / "base"),
         str(suite / "test_inner.py")],
        capture_output=True, text=True, cwd=suite, timeout=120)
    assert "1 failed" in proc.stdout and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    passed = Path((suite / "passed.txt").read_text())
    failed = Path((suite / "failed.txt").read_text())
    assert passed.parent == failed.parent == tmp_path / "base"  # both were the tests' own folders
    assert not passed.exists(), "a passing test's folder outlived it"
    assert (failed / "weights.pt").exists(), "a failing test's folder was removed before anyone could read it"
