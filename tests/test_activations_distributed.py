"""`torchrun --nproc_per_node 2 cli.py cache ...` (gloo, CPU): shards joined by a virtual dataset.

What the two-process cache must be: the single-process cache's tokens, and its
float32 activations bit for bit. Measured here, not assumed: the batch shapes
differ (batch 3 over 1001 contexts: the single process ends on a batch of 2,
shard 0 (501 contexts) never has one, and every batch of a shard holds every
other context), and the tiny models' activations still came out identical, so
the test asserts exact equality (per-context forward passes do not depend on
their batch neighbours on this CPU). Readers open the main file unchanged:
`ActivationCache` gives the same shuffled training batches, and `train-sae`
trains the same weights from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import cli
from activations.cache_writer import cache_activations
from activations.errors import UserError
from activations.reader import ActivationCache

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["blocks.0.hook_resid_post", "blocks.2.mlp.hook_post"]
CONTEXT, CONTEXTS, BATCH = 16, 1001, 3


def _args(model: Path, corpus: Path, out: Path) -> list[str]:
    return ["cache", "--model", str(model), "--corpus", str(corpus), "--hooks", ",".join(HOOKS),
            "--context-length", str(CONTEXT), "--max-tokens", str(CONTEXT * CONTEXTS), "--batch-size", str(BATCH),
            "--dtype", "float32", "--out", str(out)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "cli.py"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _run(n: int, args: list[str]) -> subprocess.CompletedProcess:
    proc = _torchrun(n, args)
    out, _ = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(out: Path) -> dict[str, str]:
    """sha256 of the main file and of every file in its shard folder (lock files aside)."""
    files = [out, *sorted(out.with_name(out.name + ".shards").glob("[!.]*"))]
    return {p.name: _sha(p) for p in files if p.exists()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Enough text for 1001 contexts of 16 tokens (the fixture `text_corpus` has far fewer)."""
    words = ("the river city market north winter paper light stone music garden number").split()
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, size=120)) + "." for _ in range(300)]
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def caches(tiny_model_dirs, corpus, tmp_path_factory) -> dict[str, Path]:
    """The same settings cached by one process (in this process) and by two (torchrun, gloo)."""
    root = tmp_path_factory.mktemp("caches")
    model = tiny_model_dirs["llama"]
    single = root / "single.h5"
    cache_activations(model=str(model), corpus=str(corpus), hooks=HOOKS, context_length=CONTEXT,
                      max_tokens=CONTEXT * CONTEXTS, batch_size=BATCH, dtype="float32", out=single, progress=False)
    two = root / "two.h5"
    done = _run(2, _args(model, corpus, two))
    assert done.returncode == 0, done.stdout[-3000:]
    return {"single": single, "two": two, "model": model}


def test_two_processes_cache_the_single_process_tokens_and_activations(caches):
    with ActivationCache(caches["single"]) as one, ActivationCache(caches["two"]) as two:
        assert one.n_contexts == two.n_contexts == CONTEXTS and two.complete
        assert np.array_equal(one.tokens(), two.tokens())
        every = np.arange(CONTEXTS)
        for hook in HOOKS:
            a, b = one.acts(hook, every), two.acts(hook, every)
            assert np.isfinite(b).all()
            assert np.array_equal(a, b), f"{hook}: max |diff| {np.abs(a - b).max()}"
            # random access and training batches read through the virtual dataset as from a plain file
            picks = [999, 3, 3, 500, 0]
            assert np.array_equal(one.acts(hook, picks), two.acts(hook, picks))
            for x, y in zip(one.iter_batches(hook, 256, seed=4), two.iter_batches(hook, 256, seed=4), strict=True):
                assert np.array_equal(x.numpy(), y.numpy())
        same = {k for k in one.attrs if k not in ("n_contexts_done",)}
        assert {k: one.attrs[k] for k in same} == {k: two.attrs[k] for k in same}
        assert two.attrs["world_size"] == 2
    with h5py.File(caches["two"], "r") as f:
        ds = f["acts"][HOOKS[0]]
        assert ds.is_virtual  # no copy: the rows live in the shards
        assert sorted(s.file_name for s in ds.virtual_sources()) == ["two.h5.shards/rank0-of-2.h5",
                                                                    "two.h5.shards/rank1-of-2.h5"]
    for r in (0, 1):
        with h5py.File(caches["two"].with_name("two.h5.shards") / f"rank{r}-of-2.h5", "r") as f:
            assert int(f.attrs["n_contexts_done"]) == len(range(r, CONTEXTS, 2))


def test_train_sae_on_the_two_process_cache_trains_the_same_weights(caches, tmp_path):
    from safetensors.torch import load_file

    hook = HOOKS[0]
    weights = []
    for name in ("single", "two"):
        out = tmp_path / name
        rc = cli.main(["train-sae", "--cache", str(caches[name]), "--hook", hook, "--ratio", "2", "--l1", "1e-3",
                       "--batch-size", "64", "--tokens", str(64 * 20), "--out", str(out)])
        assert rc == 0
        (folder,) = [p for p in out.iterdir() if not p.name.startswith(".")]
        weights.append(load_file(folder / "weights.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_a_moved_cache_reads_its_shards_and_a_missing_shard_is_one_line(caches, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    os.link(caches["two"], moved / "two.h5")
    (moved / "two.h5.shards").mkdir()
    os.link(caches["two"].with_name("two.h5.shards") / "rank0-of-2.h5", moved / "two.h5.shards" / "rank0-of-2.h5")
    with pytest.raises(UserError, match=r"rank1-of-2\.h5, which is missing: keep the folder two\.h5\.shards"):
        ActivationCache(moved / "two.h5")
    os.link(caches["two"].with_name("two.h5.shards") / "rank1-of-2.h5", moved / "two.h5.shards" / "rank1-of-2.h5")
    with ActivationCache(moved / "two.h5") as two, ActivationCache(caches["single"]) as one:
        assert np.array_equal(two.acts(HOOKS[1], [7, 8]), one.acts(HOOKS[1], [7, 8]))


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        for child in map(int, text):
            found += [child, *_children(child)]
    return found


def _rank_pid(parent: int, rank: int) -> int | None:
    for pid in _children(parent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"cli.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    return None


def _done(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["n_contexts_done"])
    except (OSError, KeyError):
        return 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the rank's pid through /proc")
def test_kill_one_rank_then_rerun_gives_the_uninterrupted_files(caches, corpus, tmp_path):
    out = tmp_path / "two.h5"  # the reference's name: the main file names its shards, and each shard its main file
    args = _args(caches["model"], corpus, out)
    proc = _torchrun(2, args, start_new_session=True)
    shard1 = tmp_path / "two.h5.shards" / "rank1-of-2.h5"
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _rank_pid(proc.pid, 1)
        time.sleep(0.05)
    while _done(shard1) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pid is not None and proc.poll() is None, "the run ended before rank 1 could be killed"
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    killed_at = _done(shard1)
    assert 0 < killed_at < len(range(1, CONTEXTS, 2))
    with h5py.File(out, "r") as f:
        assert int(f.attrs["n_contexts_done"]) == 0  # the main file counts nothing until every shard is complete
    with pytest.raises(UserError, match="no finished contexts yet"):
        ActivationCache(out)
    # one process must not write into the shards of two
    before = _files(out)
    with pytest.raises(UserError, match=r"unfinished cache of 2 process\(es\), not 1: .*--nproc_per_node 2"):
        cache_activations(model=str(caches["model"]), corpus=str(corpus), hooks=HOOKS, context_length=CONTEXT,
                          max_tokens=CONTEXT * CONTEXTS, batch_size=BATCH, dtype="float32", out=out, progress=False)
    assert _files(out) == before

    rerun = _run(2, args)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    ref, got = _files(caches["two"]), _files(out)
    assert got == ref, "the resumed files differ from the uninterrupted run's bytes"


def test_rerun_with_another_number_of_processes_is_refused_and_changes_nothing(caches, corpus, monkeypatch, capsys):
    """Rank 0 of a 3-process launch, as torchrun describes it in the environment: the refusal comes before the
    ranks join (it depends only on the files), so no process group is needed to see it."""
    before = _files(caches["two"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    rc = cli.main(_args(caches["model"], corpus, caches["two"]))
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "started by 2 processes" in lines[0] and "--nproc_per_node 2" in lines[0] and "--overwrite" in lines[0]
    assert _files(caches["two"]) == before
    assert not list(caches["two"].with_name("two.h5.shards").glob("*of-3*"))
