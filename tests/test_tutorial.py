"""docs/tutorial.md runs as written (with its `# quick:` values), so it never goes stale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import vilalign

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
# Only blocks marked exactly `python` run; `python skip` is shown, not run (the Hub).
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
QUICK = re.compile(r"^(\s*\w+ = ).+?\s+# quick: (.+)$", re.M)


def tutorial_script() -> tuple[str, int]:
    """The page's python blocks, in order, with each `# quick:` value in place; the number
    of values replaced."""
    code = "\n".join(BLOCK.findall(TUTORIAL.read_text()))
    return QUICK.subn(r"\1\2", code)


def test_every_quick_marker_is_a_simple_assignment():
    code = "\n".join(BLOCK.findall(TUTORIAL.read_text()))
    assert tutorial_script()[1] == code.count("# quick:") > 0


# ~12 s of CPU (half of it importing torch & co. in a fresh process): in the fast suite, so
# the tutorial CI runs is the one users read.
def test_the_tutorial_runs(tmp_path):
    script, _ = tutorial_script()
    (tmp_path / "tutorial.py").write_text(script)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(vilalign.__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": "1",
        "VILALIGN_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
    }
    run = subprocess.run(
        [sys.executable, "tutorial.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "'coattention'" in out and "'yes'" in out  # layer kinds, label names
    assert "accuracy/yes/no negated" in out  # predictions per question family
    assert re.search(r"cka_linear: \d of 2 co-attention layers aligned", out)
    assert (tmp_path / "runs/tutorial/alignment/alignment.csv").is_file()
