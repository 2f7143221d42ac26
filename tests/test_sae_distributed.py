"""train-sae under torchrun on CPU (gloo): 2 processes against 1, sweep sharing, and kill -9 of one rank.

Each torchrun run is a real `python -m torch.distributed.run --nproc_per_node 2 cli.py train-sae ...` on a
real tiny cache, compared with the same command run in one process (in this process, through `cli.main`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cli
from activations.distributed import Launch
from common.errors import UserError
from sae.distributed import resolve_mode, row_block, share_members
from sae.settings import TrainSettings
from sae.step import Stepper
from sae.train import member_names, train_sweep
from tests.support.sae_data import HOOK

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5  # float tolerance: measured max |difference| is printed by each test (pytest -s shows it)

# an odd batch (26 + 25 rows) and a low sink limit (rows dropped inside batches) make the two ranks' blocks unequal
COMMON = ["--hook", HOOK, "--batch-size", "51", "--sink-factor", "1.2", "--seed", "3"]
TIED = ["--kind", "tied_sae", "--ratio", "1", "2", "--l1", "1e-3", "1e-2", "--tokens", str(51 * 40)]
# a small dead-token limit so AuxK and the dead-latent counter it reads take part from the first steps
TOPK = ["--kind", "topk", "--ratio", "2", "--k", "2", "6", "--dead-tokens", "60", "--tokens", str(51 * 40)]
# thresholds learned through the straight-through estimator, and an L0 coefficient warming up over the run
JUMPRELU = ["--kind", "jumprelu", "--ratio", "2", "--l0-coefficient", "0.3", "3", "--l0-warmup", "0.3",
            "--tokens", str(51 * 40)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_cmd(args: list[str], n: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), "cli.py", "train-sae", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}


def torchrun(args: list[str], n: int = 2) -> subprocess.CompletedProcess:
    done = subprocess.run(_torchrun_cmd(args, n), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def one_process(args: list[str]) -> None:
    assert cli.main(["train-sae", *args]) == 0


def max_difference(a: Path, b: Path) -> float:
    """Largest |a - b| over every tensor of two dictionary folders (which must hold the same tensors)."""
    ta, tb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert ta.keys() == tb.keys()
    return max(float((ta[k] - tb[k]).abs().max()) for k in ta)


def folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if (p / "weights.safetensors").exists())


@pytest.fixture(scope="module")
def tied_alone(tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tied_one")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks run (OMP_NUM_THREADS=1)
    try:
        one_process(["--cache", str(tiny_cache), "--out", str(out), *COMMON, *TIED])
    finally:
        torch.set_num_threads(before)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind_args", [TIED, TOPK, JUMPRELU], ids=["tied_sae", "topk", "jumprelu"])
def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(kind_args, tiny_cache, tmp_path,
                                                                                  tied_alone):
    alone = tied_alone
    if kind_args is not TIED:
        alone = tmp_path / "one"
        one_process(["--cache", str(tiny_cache), "--out", str(alone), *COMMON, *kind_args])
    two = tmp_path / "two"
    done = torchrun(["--cache", str(tiny_cache), "--out", str(two), *COMMON, *kind_args])
    assert "trained 4 dictionaries" in done.stdout or "trained 2 dictionaries" in done.stdout
    assert folders(two) == folders(alone) and len(folders(two)) in (2, 4)
    assert not list(two.glob(".train-*")), "the checkpoint folder is removed at the end"
    diffs = {name: max_difference(alone / name, two / name) for name in folders(two)}
    print(f"max |1 process - 2 processes| per dictionary: {diffs}")
    assert max(diffs.values()) < TOL
    # the comparison can fail: the same run with another seed is far away
    other = tmp_path / "other_seed"
    one_process(["--cache", str(tiny_cache), "--out", str(other), *COMMON[:-1], "4", *kind_args])
    assert max_difference(other / folders(two)[0], two / folders(two)[0]) > 100 * TOL


@pytest.mark.slow
def test_distribute_sweep_gives_each_member_its_single_process_weights(tiny_cache, tmp_path, tied_alone):
    out = tmp_path / "sweep"
    done = torchrun(["--cache", str(tiny_cache), "--out", str(out), *COMMON, *TIED, "--distribute", "sweep"])
    assert "rank 0 of 2 trains" in done.stdout and "rank 1 of 2 trains" in done.stdout
    assert folders(out) == folders(tied_alone)
    diffs = {name: max_difference(tied_alone / name, out / name) for name in folders(out)}
    print(f"max |single-process sweep - shared sweep| per member: {diffs}")
    assert max(diffs.values()) < TOL


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_pid(root: int, rank: int) -> int | None:
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            env = []
        if f"RANK={rank}".encode() in env and pid != root:
            return pid
        todo.extend(_children(pid))
    return None


@pytest.mark.slow
def test_sigkill_of_one_rank_after_a_checkpoint_then_rerun_resumes_to_the_uninterrupted_weights(tiny_cache, tmp_path):
    args = ["--cache", str(tiny_cache), *COMMON, "--kind", "tied_sae", "--ratio", "1", "--l1", "1e-3",
            "--tokens", str(51 * 1000), "--checkpoint-every", "20"]
    whole = tmp_path / "whole"
    one_process([*args, "--out", str(whole)])
    out = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun_cmd([*args, "--out", str(out)]), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob(".train-*/state.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.02)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, log[-2000:]
    assert not folders(out), "the killed run finished before the kill: lengthen it"
    done = torchrun([*args, "--out", str(out)])
    assert "resuming from the checkpoint at step" in done.stdout
    [name] = folders(out)
    diff = max_difference(whole / name, out / name)
    print(f"max |uninterrupted - killed and resumed|: {diff}")
    assert diff < TOL


def test_modes_and_shares():
    two = Launch(rank=1, world_size=2)
    assert resolve_mode(Launch(), "sweep", "batchtopk") is None  # one process: --distribute changes nothing
    assert resolve_mode(two, None, "topk") == "data"
    assert resolve_mode(two, "sweep", "batchtopk") == "sweep"
    with pytest.raises(UserError, match="--distribute sweep"):
        resolve_mode(two, None, "batchtopk")
    # every member once, largest ratios spread first; blocks of a batch cover it exactly
    shares = share_members([1, 1, 2, 2, 4], 2)
    assert sorted(i for s in shares for i in s) == [0, 1, 2, 3, 4] and shares == [[0, 4], [1, 2, 3]]
    assert share_members([1], 3) == [[0], [], []]
    assert [row_block(51, Launch(rank=r, world_size=2)) for r in (0, 1)] == [(0, 26), (26, 51)]
    # --distribute decides where the run goes, not what it computes: it is not part of the training identity
    assert TrainSettings(hook="h", distribute="sweep").public() == TrainSettings(hook="h").public()
    assert member_names(TrainSettings(hook="h", ratios=[1, 2], l1s=[1e-3]), [(2.0, 1e-3)]) == ["tied_R2_l1_0.001"]


def test_the_comparisons_above_split_batches_unevenly(tiny_cache):
    """COMMON's sink limit really drops rows inside batches, so the ranks' blocks differ by more than the odd row."""
    from sae.data import split_cache

    train, _ = split_cache(tiny_cache, HOOK, 0.1, skip_first=True, sink_factor=1.2)
    sizes = [b.shape[0] for b in train.batches(51, 51 * 40, 3)]
    assert len(sizes) == 40 and min(sizes) < 50 and max(sizes) <= 51


class _Interrupt(Stepper):
    """Stops the run (as a kill would) after 30 steps, past the checkpoint at step 20."""

    def __call__(self, x):
        if self.calls >= 30:
            raise KeyboardInterrupt
        return super().__call__(x)


def _sources(cache: Path):
    from sae.data import split_cache

    return split_cache(cache, HOOK, 0.1, skip_first=True, sink_factor=1.2)


def _settings(cache: Path, out: Path, **kw) -> TrainSettings:
    """The settings `cli.py train-sae` builds from COMMON + these flags (so checkpoints are shared with it)."""
    return TrainSettings(hook=HOOK, cache=str(cache), out=str(out), batch_size=51, sink_factor=1.2, seed=3,
                         checkpoint_every=20, **kw)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_data_parallel_to_the_same_weights(tiny_cache, tmp_path, tied_alone):
    """A data-parallel checkpoint does not depend on N: one process stops, two finish, as one would have."""
    out = tmp_path / "mixed"
    settings = _settings(tiny_cache, out, ratios=[1, 2], l1s=[1e-3, 1e-2], tokens=51 * 40)
    train, held_out = _sources(tiny_cache)
    with pytest.raises(KeyboardInterrupt):
        train_sweep(train, settings, out, progress=False, eval_source=held_out, stepper_factory=_Interrupt)
    assert list(out.glob(".train-*/state.json"))
    done = torchrun(["--cache", str(tiny_cache), "--out", str(out), *COMMON, *TIED])
    assert "resuming from the checkpoint at step 20 of 40" in done.stdout
    diffs = {name: max_difference(tied_alone / name, out / name) for name in folders(out)}
    print(f"max |one process - (one process, resumed by two)|: {diffs}")
    assert len(diffs) == 4 and max(diffs.values()) < TOL


def test_a_sweep_share_resumes_from_its_own_checkpoint(tiny_cache, tmp_path, tied_alone, capsys):
    """Under --distribute sweep each rank checkpoints its member set; a rerun picks up exactly that set.

    Sweep sharing makes no collective call in the step loop, so a rank is run here in this process.
    """
    out = tmp_path / "share"
    settings = _settings(tiny_cache, out, ratios=[1, 2], l1s=[1e-3, 1e-2], tokens=51 * 40)
    train, held_out = _sources(tiny_cache)
    rank1 = Launch(rank=1, world_size=2)
    with pytest.raises(KeyboardInterrupt):
        train_sweep(train, settings, out, progress=False, eval_source=held_out, stepper_factory=_Interrupt,
                    launch=rank1, distribute="sweep")
    [ckpt] = out.glob(".train-*/state.json")
    assert ckpt.parent.name.count("-") == 2  # keyed by the run and by the member set
    capsys.readouterr()
    paths = train_sweep(train, settings, out, progress=False, eval_source=held_out, launch=rank1, distribute="sweep")
    assert "resuming from the checkpoint at step 20 of 40" in capsys.readouterr().out
    assert [p.name for p in paths] == ["tied_R1_l1_0.01", "tied_R2_l1_0.01"] == folders(out)
    assert not ckpt.parent.exists()
    diffs = {p.name: max_difference(tied_alone / p.name, p) for p in paths}
    print(f"max |single-process sweep - resumed share|: {diffs}")
    assert max(diffs.values()) < TOL


@pytest.mark.slow
def test_an_output_folder_locked_by_another_run_stops_every_rank_with_one_line(tiny_cache, tmp_path):
    """Only rank 0 takes the lock; when it cannot, the other ranks stop too instead of waiting for it."""
    from common.locks import output_lock

    out = tmp_path / "busy"
    with output_lock(out, folder=True):
        done = subprocess.run(_torchrun_cmd(["--cache", str(tiny_cache), "--out", str(out), *COMMON, *TIED]),
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # rank 0 says who holds the lock, rank 1 that rank 0 could not take it; whichever exits first, torchrun stops
    # the other, sometimes before it prints (a race: 1 line in 1 of 4 concurrent runs), and no rank waits
    said = ("is being written by process", "could not be locked by rank 0")
    assert 1 <= len(errors) <= 2 and all(str(out) in e and any(s in e for s in said) for e in errors), \
        done.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir()), "nothing was written"


def _locked_rank(rank: int, port: int, cache: str, out: str, said: "torch.multiprocessing.Queue") -> None:
    """One rank of `test_every_rank_refuses_a_locked_output_by_itself` (a spawned process: module level)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from sae.distributed_command import train_sae_distributed

    settings = _settings(Path(cache), Path(out), kind="tied_sae", ratios=[1], l1s=[1e-3], tokens=51 * 4)
    try:
        train_sae_distributed(settings, Launch(rank=rank, world_size=2, local_rank=rank), export=lambda folders: None)
        said.put((rank, "trained"))
    except UserError as err:
        said.put((rank, str(err)))


@pytest.mark.slow
def test_every_rank_refuses_a_locked_output_by_itself(tiny_cache, tmp_path):
    """The agreement itself, without torchrun (which stops a rank as soon as another fails, so the launch test
    cannot tell a rank that stopped by itself from one that was killed while waiting): each of two gloo ranks
    returns its own one-line error, rank 0 the lock holder's, rank 1 that rank 0 could not lock."""
    import torch.multiprocessing as mp

    from common.locks import output_lock

    out = tmp_path / "busy"
    ctx = mp.get_context("spawn")
    said = ctx.Queue()
    port = _free_port()
    with output_lock(out, folder=True):
        procs = [ctx.Process(target=_locked_rank, args=(r, port, str(tiny_cache), str(out), said)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    answers = dict(said.get(timeout=5) for _ in procs)
    assert "is being written by process" in answers[0] and "\n" not in answers[0]
    assert "could not be locked by rank 0" in answers[1] and "\n" not in answers[1]
    assert not out.exists() or not any(out.iterdir())


def test_a_rank_without_sweep_members_writes_nothing(tiny_cache, tmp_path, capsys):
    out = tmp_path / "idle"
    settings = _settings(tiny_cache, out, ratios=[1], l1s=[1e-3, 1e-2], tokens=51 * 4)
    train, held_out = _sources(tiny_cache)
    assert train_sweep(train, settings, out, progress=False, eval_source=held_out,
                       launch=Launch(rank=2, world_size=3), distribute="sweep") == []
    assert "no sweep member to train" in capsys.readouterr().out and not out.exists()
