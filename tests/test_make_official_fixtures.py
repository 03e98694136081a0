"""scripts/make_official_fixtures.py: its command line works without a checkout of the official code.

Running it needs that checkout (github.com/zsyOAOA/DifFace at 5c9ab80); how the committed reference
set compares with a rebuild is described in tests/fixtures/official/README.md.
"""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_official_fixtures.py"


def _run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_help_without_the_official_checkout(tmp_path):
    res = _run("--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for option in ("--official", "--out", "--inputs", "--faces", "--compare", "--overwrite", "5c9ab80"):
        assert option in res.stdout, option


def test_refuses_to_replace_the_committed_set_and_names_a_wrong_checkout(tmp_path):
    res = _run("--official", tmp_path)  # default --out: tests/fixtures/official, which exists
    assert res.returncode == 2 and "--overwrite" in res.stderr, res.stderr
    res = _run("--official", tmp_path, "--out", tmp_path / "out")
    assert res.returncode != 0 and str(tmp_path) in res.stderr and "zsyOAOA/DifFace" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
