"""A second process that holds an output's lock, as a second run of a command would (tests of the lock and of
`claim_output`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK_HOLDER = """
import sys
from common.locks import output_lock
with output_lock(sys.argv[1], folder=sys.argv[2] == "folder"):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    """A second process that holds the output lock of `path` until it is killed (kill -9 by default)."""

    def __init__(self, path: Path, folder: bool):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), "folder" if folder else "file"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout.readline().strip() == "locked"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
