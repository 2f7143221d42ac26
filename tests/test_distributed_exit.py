"""Leaving the process group ends gloo's threads, so no rank can abort while Python exits.

The failure this guards against was rare (a rank killed by SIGABRT, "terminate
called without an active exception", about 1 run in 50 on 2 busy cores) but
its precondition is not: gloo's worker threads outliving destroy_process_group.
That is checked here directly, on every rank, for both commands that join a
process group, so the test fails every time the precondition returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sae_data import HOOK
from tests.test_sae_distributed import COMMON, TIED, _env, _free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads threads from Linux's /proc")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "support" / "rank_threads.py"


def _threads_after(args: list[str], tmp_path: Path) -> dict[int, list[str]]:
    """Run `cli.py args` under torchrun with 2 ranks; each rank's thread names once the command has returned."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(SCRIPT), *args]
    where = tmp_path / "threads"
    where.mkdir()
    done = subprocess.run(cmd, cwd=REPO, env={**_env(), "RANK_THREADS_DIR": str(where)}, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {int(p.stem.removeprefix("rank")): json.loads(p.read_text(encoding="utf-8")) for p in where.iterdir()}
    assert sorted(found) == [0, 1], done.stdout[-3000:]
    return found


def _gloo(names: list[str]) -> list[str]:
    return [n for n in names if "gloo" in n]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["data", "sweep"])
def test_train_sae_leaves_no_gloo_thread_behind(tiny_cache, tmp_path, mode):
    found = _threads_after(["train-sae", "--cache", str(tiny_cache), "--out", str(tmp_path / "out"), *COMMON, *TIED,
                            "--distribute", mode], tmp_path)
    for rank, names in found.items():
        assert "python" in names  # the list was read: at least the main thread is in it
        assert not _gloo(names), f"rank {rank} still runs gloo threads after leaving the group: {names}"


@pytest.mark.slow
def test_cache_leaves_no_gloo_thread_behind(tiny_model_dirs, tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Line {i} of a small corpus for two ranks."}) + "\n"
                              for i in range(40)), encoding="utf-8")
    found = _threads_after(["cache", "--model", str(tiny_model_dirs["gpt_neox"]), "--corpus", str(corpus),
                            "--hooks", HOOK, "--context-length", "16", "--max-tokens", "256", "--batch-size", "8",
                            "--out", str(tmp_path / "cache.h5")], tmp_path)
    for rank, names in found.items():
        assert not _gloo(names), f"rank {rank} still runs gloo threads after leaving the group: {names}"
