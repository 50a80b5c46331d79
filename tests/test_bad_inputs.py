"""Every bad input is one clear line, exit code 2, no traceback, found before the work.

The catalogue is tests/bad_inputs.py (also the table of docs/robustness.md). The cases
that need no model run in the fast suite; all of them with ``-m slow``.
"""

from __future__ import annotations

import pytest

from tests.bad_inputs import CASES, finished_run, run_case


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("finished"))


def _check(case, tmp_path, finished_run_dir=None):
    code, message = run_case(case, tmp_path / case.name, finished_run_dir)
    assert code == 2, message
    assert message.count("\n") == 0 and "Traceback" not in message, message
    assert message.startswith("vilalign ") and case.expect in message, message


@pytest.mark.parametrize("case", [c for c in CASES if not c.slow], ids=lambda c: c.name)
def test_a_bad_input_is_one_line_and_exit_2(case, tmp_path):
    _check(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.slow], ids=lambda c: c.name)
def test_a_bad_input_found_by_a_model_is_one_line_and_exit_2(case, tmp_path, finished):
    _check(case, tmp_path, finished)


def test_the_catalogue_has_at_least_twenty_cases():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
