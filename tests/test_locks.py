"""Folder locks: one process at a time, the holder named, a killed holder's lock taken over."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from vilalign.locks import FolderInUseError, brief_lock, folder_lock, is_held

HOLD = """
import sys, time
from vilalign.locks import folder_lock
with folder_lock(sys.argv[1], "run"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    """Another process holding ``folder`` (returns once it holds it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        assert is_held(tmp_path / "run") is True
        with pytest.raises(FolderInUseError) as info, folder_lock(tmp_path / "run"):
            pass
        message = str(info.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in message
        assert "\n" not in message and str(tmp_path / "run") in message
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert is_held(tmp_path / "run") is False  # locked once, its holder gone
    with caplog.at_level(logging.INFO, "vilalign.locks"), folder_lock(tmp_path / "run"):
        assert is_held(tmp_path / "run") is True
    assert f"took over the lock of pid {proc.pid}" in caplog.text


def test_locks_are_reentrant_in_one_process_and_released_after(tmp_path):
    with folder_lock(tmp_path / "grid", "experiment"), folder_lock(tmp_path / "grid"):
        assert is_held(tmp_path / "grid")
    assert is_held(tmp_path / "grid") is False
    assert is_held(tmp_path / "never") is None


def test_a_brief_lock_waits_for_the_holder_then_gives_up_naming_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        start = time.monotonic()
        with pytest.raises(FolderInUseError), brief_lock(tmp_path / ".vilalign.lock", wait=0.3):
            pass
        assert time.monotonic() - start >= 0.3
    finally:
        proc.kill()
        proc.wait()
    with brief_lock(tmp_path / ".vilalign.lock", wait=5):
        pass


def test_a_read_only_place_is_named_before_any_work(tmp_path):
    from tests.bad_inputs import read_only

    folder = tmp_path / "ro" / "x"
    with read_only(tmp_path / "ro"), pytest.raises(PermissionError) as info, folder_lock(folder):
        pass
    assert f"cannot write into the run folder {folder}" in str(info.value)
