"""A torchrun rank that runs one `cli.py` command, then writes the threads its process still has.

Why: a gloo worker thread alive at interpreter exit can be freeing the last
collective's tensors, which needs the GIL Python is tearing down, and the
process aborts (see `activations.distributed.init_process_group`). Leaving the
process group must end those threads; this shows whether it did.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # torchrun puts this folder on the path, not the repo

import cli  # noqa: E402


def thread_names() -> list[str]:
    """Names of every native thread of this process (Linux /proc), Python's and the libraries' alike."""
    tasks = Path("/proc/self/task")
    return sorted((tasks / t / "comm").read_text().strip() for t in os.listdir(tasks))


if __name__ == "__main__":
    code = cli.main(sys.argv[1:])
    # a file per rank: the ranks share one stdout, where their lines can interleave
    out = Path(os.environ["RANK_THREADS_DIR"]) / f"rank{os.environ['RANK']}.json"
    out.write_text(json.dumps(thread_names()), encoding="utf-8")
    sys.exit(code)
