"""Third-party output lands in the log file, dermmobile's own lines on the terminal (dermmobile/chatter.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import os, sys, warnings
from pathlib import Path
from dermmobile.chatter import say, to_log
print("before")
with to_log(Path(sys.argv[1])):
    os.write(1, b"c++ on stdout\\n")
    os.write(2, b"c++ on stderr\\n")
    print("python print")
    warnings.warn("a library warning")
    say("our own line")
    with to_log(Path(sys.argv[1])):
        say("nested line")
print("after")
"""


def test_third_party_output_goes_to_the_log_and_ours_to_the_terminal(tmp_path):
    log = tmp_path / "converters.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = log.read_text()
    for chatter in ("c++ on stdout", "c++ on stderr", "python print", "a library warning"):
        assert chatter in written and chatter not in done.stdout + done.stderr
    assert "our own line" in done.stderr and "nested line" in done.stderr and "our own line" not in written
    assert done.stdout.split() == ["before", "after"]  # the terminal's stdout is back afterwards


def test_the_log_is_never_written_through_a_link(tmp_path):
    from dermmobile.chatter import to_log
    from dermmobile.errors import UnsafeFileError

    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "converters.log").symlink_to(target)
    with pytest.raises(UnsafeFileError), to_log(tmp_path / "converters.log"):
        pass
    assert target.read_text() == "keep"
