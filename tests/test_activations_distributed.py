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

The two-process cache under test is a resumed one: rank 1 is killed with
SIGKILL after its first batch and the same command is rerun, so every check
of the result is also a check of kill-resume (two torchrun launches in all,
because each costs seconds of process start-up on a shared 2-core machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(),
                                reason="finds rank 1's pid through /proc to kill it")

import cli
from activations.cache_writer import cache_activations
from common.errors import UserError
from activations.reader import ActivationCache
from tests.support.cache_files import n_contexts_done

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
def caches(tiny_model_dirs, corpus, tmp_path_factory) -> dict:
    """The same settings cached by one process (in this process) and by two (torchrun, gloo), the latter killed
    once and resumed; `after_kill` records what the unfinished files looked like in between."""
    root = tmp_path_factory.mktemp("caches")
    model = tiny_model_dirs["llama"]
    single = root / "single.h5"
    cache_activations(model=str(model), corpus=str(corpus), hooks=HOOKS, context_length=CONTEXT,
                      max_tokens=CONTEXT * CONTEXTS, batch_size=BATCH, dtype="float32", out=single, progress=False)
    two = root / "two.h5"
    args = _args(model, corpus, two)
    after_kill = _kill_rank1(args, two)
    after_kill.update(_refusals(args, model, corpus, two))
    done = _run(2, args)
    assert done.returncode == 0, done.stdout[-3000:]
    return {"single": single, "two": two, "model": model, "after_kill": after_kill}


def _kill_rank1(args: list[str], out: Path) -> dict:
    """Start the 2-process run, SIGKILL rank 1 once its shard counts a batch, wait for torchrun to stop."""
    proc = _torchrun(2, args, start_new_session=True)
    shard1 = out.with_name(out.name + ".shards") / "rank1-of-2.h5"
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _rank_pid(proc.pid, 1)
        time.sleep(0.05)
    while not shard1.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the ranks are still starting: leave them the CPU
    while n_contexts_done(shard1) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pid is not None and proc.poll() is None, "the run ended before rank 1 could be killed"
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    with h5py.File(out, "r") as f:
        main_done = int(f.attrs["n_contexts_done"])
    try:
        ActivationCache(out)
        reader = ""
    except UserError as err:
        reader = str(err)
    return {"returncode": proc.returncode, "rank1_done": n_contexts_done(shard1), "main_done": main_done,
            "reader": reader}


def _refusals(args: list[str], model: Path, corpus: Path, out: Path) -> dict:
    """One process, then rank 0 of three, on the unfinished 2-process cache: their errors, and whether any file
    changed."""
    before = _files(out)
    try:
        cache_activations(model=str(model), corpus=str(corpus), hooks=HOOKS, context_length=CONTEXT,
                          max_tokens=CONTEXT * CONTEXTS, batch_size=BATCH, dtype="float32", out=out, progress=False)
        one = ""
    except UserError as err:
        one = str(err)
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stderr(stderr):
        _as_rank0_of(env, 3)
        three_rc = cli.main(args)
    return {"one_process": one, "three_rc": three_rc, "three_stderr": stderr.getvalue(),
            "unchanged": _files(out) == before,
            "three_shards": list(out.with_name(out.name + ".shards").glob("*of-3*"))}


@pytest.mark.slow
def test_a_killed_rank_leaves_an_unfinished_cache_that_no_other_launch_writes(caches):
    seen = caches["after_kill"]
    assert seen["returncode"] != 0
    assert 0 < seen["rank1_done"] < len(range(1, CONTEXTS, 2)), "rank 1 was killed mid-run"
    assert seen["main_done"] == 0  # the main file counts nothing until every shard is complete
    assert "no finished contexts yet" in seen["reader"]
    assert re.search(r"unfinished cache of 2 process\(es\), not 1: .*--nproc_per_node 2", seen["one_process"])
    assert seen["three_rc"] == 2
    lines = seen["three_stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "unfinished cache of 2 process(es), not 3" in lines[0] and "--nproc_per_node 2" in lines[0]
    assert "--overwrite" in lines[0]
    assert seen["unchanged"] and not seen["three_shards"]


@pytest.mark.slow
def test_two_processes_resumed_cache_the_single_process_tokens_and_activations(caches):
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


@pytest.mark.slow
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


@pytest.mark.slow
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




def _as_rank0_of(env: pytest.MonkeyPatch, n: int) -> None:
    """This process as rank 0 of an n-process launch, as torchrun describes it in the environment. Enough for
    checks that come before the ranks join (they depend only on the files and arguments): no process group."""
    env.setenv("WORLD_SIZE", str(n))
    env.setenv("RANK", "0")
    env.setenv("LOCAL_RANK", "0")


@pytest.mark.slow
def test_a_finished_cache_is_finished_for_any_number_of_processes(caches, corpus, monkeypatch, capsys):
    before = _files(caches["two"])
    _as_rank0_of(monkeypatch, 3)
    assert cli.main(_args(caches["model"], corpus, caches["two"])) == 0
    assert "already complete (1001 contexts); nothing to do" in capsys.readouterr().out
    assert _files(caches["two"]) == before
    assert not list(caches["two"].with_name("two.h5.shards").glob("*of-3*"))


@pytest.mark.slow
def test_overwrite_with_a_bad_hook_removes_nothing(caches, corpus, tmp_path):
    """--overwrite replaces a cache only once the model, hooks and corpus pass: a bad hook leaves every file."""
    import shutil

    out = tmp_path / "two.h5"
    shutil.copy(caches["two"], out)
    shutil.copytree(caches["two"].with_name("two.h5.shards"), tmp_path / "two.h5.shards")
    before = _files(out)
    args = _args(caches["model"], corpus, out)
    args[args.index("--hooks") + 1] = "blocks.99.hook_resid_post"
    done = _run(2, [*args, "--overwrite"])
    assert done.returncode != 0
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert errors and all("99" in line for line in errors), done.stdout[-2000:]
    assert _files(out) == before


def test_cuda_without_a_gpu_for_this_rank_is_one_line():
    """cache and train-sae give rank r the GPU of its LOCAL_RANK; a rank with none stops with one line."""
    from activations.distributed import Launch, rank_device

    assert rank_device("cpu", Launch(rank=1, world_size=2, local_rank=1)) == "cpu"
    assert rank_device("cuda", Launch()) == "cuda"  # one process: unchanged
    with pytest.raises(UserError, match="LOCAL_RANK.*--nproc_per_node") as err:
        rank_device("cuda", Launch(rank=1, world_size=2, local_rank=64))
    assert "\n" not in str(err.value)
