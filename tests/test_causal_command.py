"""`cli.py patch-ioi` end to end on tiny saved models of every family, and its input errors."""

from __future__ import annotations

import json

import pytest
import torch

import cli
from common.errors import UserError
from causal.patching import kl_rows, last_logits, pad_token_id, pair_batch
from causal.prompts import IOIConfig, make_ioi_pairs
from causal.settings import PatchIOISettings
from sae.dictionaries import NeuronBasis, TiedSAE

NAMES = "John,Mary,Mar,Jo,Ber,Fr,Ger"


def _dicts(tmp_path, hook: str, d: int = 32, hook2: str | None = None, n_tied: int = 8):
    """A neuron basis and a small random tied SAE (few features keep the 50-τ greedy quick)."""
    neuron = NeuronBasis({}, {"d_in": d, "n_features": d, "hook": hook}).save(tmp_path / "neuron")
    m = torch.randn(n_tied, d, generator=torch.Generator().manual_seed(0))
    sae_dir = TiedSAE({"M": m, "b": torch.zeros(n_tied)},
                      {"d_in": d, "n_features": n_tied, "hook": hook2 or hook}).save(tmp_path / "tied")
    return [str(neuron), str(sae_dir)]


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama"])
def test_patch_ioi_writes_curves_for_every_dictionary(tiny_model_dirs, tmp_path, arch, capsys):
    hook = "blocks.1.hook_resid_post"
    tied = _dicts(tmp_path, hook)[1]
    second = _dicts(tmp_path / "second", hook, n_tied=12)[1]
    dicts = [tied, second.replace("tied", "tied12")]
    (tmp_path / "second" / "tied").rename(dicts[1])
    out, png = tmp_path / "out", tmp_path / "kl.png"
    rc = cli.main(["patch-ioi", "--model", str(tiny_model_dirs[arch]), "--dict", *dicts, "--n-prompts", "5",
                   "--out", str(out), "--plot", str(png), "--names", NAMES])
    assert rc == 0
    result = json.loads((out / "ioi.json").read_text())
    printed = capsys.readouterr().out
    assert "logit diff" in printed
    for key in ("clean_logit_diff", "clean_accuracy", "kl_clean_vs_counterfactual"):
        assert isinstance(result[key], float)
    assert result["model_does_ioi"] == (result["clean_logit_diff"] > 0)
    if not result["model_does_ioi"]:  # a random tiny model may fail the task: it must be said plainly
        assert "does not do the IOI task" in result["warning"] and "does not do the IOI task" in printed
    assert set(result["dictionaries"]) == {"tied", "tied12"}

    # KL(clean ‖ cf) recomputed here from the same prompts.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    batch = pair_batch(make_ioi_pairs(tok, IOIConfig(n_prompts=5, seed=0, names=NAMES.split(","))), pad_token_id(tok))
    clean = last_logits(model, batch.clean_ids, batch.lengths)
    cf = last_logits(model, batch.cf_ids, batch.lengths)
    assert result["kl_clean_vs_counterfactual"] == pytest.approx(float(kl_rows(clean, cf).mean()), rel=1e-4)
    # per prompt, by hand from the logits: logit(IO) - logit(S), and whether IO wins
    assert len(result["per_prompt"]) == 5
    for i, (diff, correct) in enumerate(result["per_prompt"]):
        want = float(clean[i, batch.io_ids[i]] - clean[i, batch.s_ids[i]])
        assert diff == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert correct is (want > 0)
    assert result["clean_logit_diff"] == pytest.approx(sum(d for d, _ in result["per_prompt"]) / 5, rel=1e-6)
    assert result["clean_accuracy"] == pytest.approx(sum(c for _, c in result["per_prompt"]) / 5)

    for name, n_features in (("tied", 8), ("tied12", 12)):
        entry = result["dictionaries"][name]
        assert entry["hook"] == hook and entry["kind"] == "tied_sae"
        curve = entry["curve"]
        assert len(curve) == 1 + 50  # every feature patched, then one point per τ
        assert curve[0][0] == n_features
        ns = [n for n, _, _ in curve]
        assert ns == sorted(ns, reverse=True)
        assert all(kl >= -1e-9 and norm >= 0 for _, kl, norm in curve)
        if ns[-1] == 0:  # nothing patched: the clean run, no edit
            assert curve[-1][2] == 0.0
        base = result["kl_clean_vs_counterfactual"]
        for fraction, n in entry["features_to_reach"].items():
            below = [m for m, kl, _ in curve if kl <= float(fraction) * base]
            assert n == (min(below) if below else None)
        assert entry["screen_curve"] is None and entry["features_to_reach_screen"] is None  # no --candidates
    assert png.exists() and png.stat().st_size > 1000


def test_features_to_reach_reads_the_fewest_features_under_each_threshold():
    from causal.commands import features_to_reach

    points = [[10, 0.5, 1.0], [5, 0.9, 1.0], [7, 0.95, 1.0], [2, 3.0, 0.5]]
    assert features_to_reach(points, kl_none=4.0) == {"0.25": 5, "0.1": None}  # 25%: KL <= 1.0; 10%: <= 0.4
    assert features_to_reach(None, kl_none=4.0) == {"0.25": None, "0.1": None}


def test_candidates_screen_keeps_measured_kls(tiny_model_dirs, tmp_path):
    """With --candidates K the greedy starts from K patched features; every KL is still measured."""
    from causal.commands import patch_ioi_command

    hook = "blocks.1.hook_resid_post"
    dicts = _dicts(tmp_path, hook)
    result = patch_ioi_command(PatchIOISettings(model=str(tiny_model_dirs["gpt_neox"]), dicts=dicts[:1], n_prompts=4,
                                                seed=1, out=str(tmp_path / "out"), candidates=5,
                                                names=NAMES.split(",")))
    entry = result["dictionaries"]["neuron"]
    assert entry["candidates"] == 5
    assert entry["curve"][0][0] == 32 and entry["curve"][1][0] <= 5
    assert all(n <= 5 for n, _, _ in entry["curve"][1:])
    assert set(entry["patched_final"]) <= set(range(32))
    ms = [m for m, _, _ in entry["screen_curve"]]  # the screen's top-m states between "all" and K
    assert ms and ms == [5 * 2**i for i in range(len(ms))] and ms[-1] < 32
    assert json.loads((tmp_path / "out" / "ioi_config.json").read_text())["candidates"] == 5


def test_on_a_cpu_the_default_screens_by_attribution_and_full_greedy_is_one_flag(tiny_model_dirs, tmp_path, capsys):
    """Issue 24: no --candidates on a CPU screens to CPU_DEFAULT_CANDIDATES (said in one line, recorded);
    --full-greedy gives the paper's greedy over every feature; the two flags together are refused."""
    from causal.commands import patch_ioi_command
    from causal.settings import CPU_DEFAULT_CANDIDATES

    hook, n = "blocks.1.hook_resid_post", CPU_DEFAULT_CANDIDATES + 6
    m = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    wide = TiedSAE({"M": m, "b": torch.zeros(n)}, {"d_in": 32, "n_features": n, "hook": hook}).save(tmp_path / "wide")
    base = dict(model=str(tiny_model_dirs["gpt_neox"]), dicts=[str(wide)], n_prompts=3, names=NAMES.split(","))
    result = patch_ioi_command(PatchIOISettings(**base, out=str(tmp_path / "screen")))
    assert "pass --full-greedy" in capsys.readouterr().out
    entry = result["dictionaries"]["wide"]
    assert entry["candidates"] == CPU_DEFAULT_CANDIDATES and entry["screen_curve"]
    assert all(k <= CPU_DEFAULT_CANDIDATES for k, _, _ in entry["curve"][1:])
    saved = json.loads((tmp_path / "screen" / "ioi.json").read_text())
    assert saved["greedy"] == {"candidates": CPU_DEFAULT_CANDIDATES,
                               "chosen_by": f"default on cpu: --candidates {CPU_DEFAULT_CANDIDATES}"}
    assert json.loads((tmp_path / "screen" / "ioi_config.json").read_text())["candidates"] == CPU_DEFAULT_CANDIDATES

    full = patch_ioi_command(PatchIOISettings(**base, out=str(tmp_path / "full"), full_greedy=True))
    assert "--full-greedy" not in capsys.readouterr().out
    entry = full["dictionaries"]["wide"]
    assert entry["candidates"] is None and entry["screen_curve"] is None and entry["curve"][0][0] == n
    assert full["greedy"] == {"candidates": None, "chosen_by": "--full-greedy"}
    with pytest.raises(UserError, match="--candidates 8 and --full-greedy contradict"):
        patch_ioi_command(PatchIOISettings(**base, out=str(tmp_path / "both"), candidates=8, full_greedy=True))
    assert not (tmp_path / "both").exists()


@pytest.mark.slow
def test_default_model_does_ioi_and_suffix_runs_match(default_model):
    """The real SmolLM2 prefers the indirect object, and the suffix-only run agrees with a full forward."""
    from causal.suffix import SuffixRunner

    pairs = make_ioi_pairs(default_model.tokenizer, IOIConfig(n_prompts=4, seed=0))
    batch = pair_batch(pairs, pad_token_id(default_model.tokenizer))
    clean = last_logits(default_model.model, batch.clean_ids, batch.lengths)
    rows = torch.arange(batch.n)
    assert float((clean[rows, batch.io_ids] - clean[rows, batch.s_ids]).mean()) > 0
    runner = SuffixRunner(default_model.model, "blocks.26.hook_resid_post", batch)  # checks itself on construction
    assert runner.suffix_only
    assert torch.allclose(runner.logits(torch.zeros(1, *runner.x_clean.shape))[0], clean, atol=1e-3)


def test_rerun_keeps_finished_dictionaries_and_other_settings_fail_untouched(tiny_model_dirs, tmp_path, capsys):
    """A rerun after a kill runs only what ioi.json lacks; other settings in the folder are refused before any write."""
    from common.errors import UserError
    from causal.commands import patch_ioi_command

    model = str(tiny_model_dirs["gpt2"])
    dicts = _dicts(tmp_path, "blocks.1.hook_resid_post")
    out = tmp_path / "out"

    def patch_ioi(**kwargs):
        return patch_ioi_command(PatchIOISettings(**kwargs))

    first = patch_ioi(model=model, dicts=dicts, n_prompts=4, seed=1, out=str(out), names=NAMES.split(","))
    # as if killed after the first dictionary: ioi.json holds only the neuron basis
    saved = json.loads((out / "ioi.json").read_text())
    del saved["dictionaries"]["tied"]
    (out / "ioi.json").write_text(json.dumps(saved))
    capsys.readouterr()
    again = patch_ioi(model=model, dicts=dicts, n_prompts=4, seed=1, out=str(out), names=NAMES.split(","))
    printed = capsys.readouterr().out
    assert "neuron: already in" in printed and "tied: already in" not in printed
    assert again["dictionaries"]["neuron"] == first["dictionaries"]["neuron"]  # kept as written, seconds included
    flat = lambda curve: [v for point in curve for v in point]  # noqa: E731
    assert flat(again["dictionaries"]["tied"]["curve"]) == pytest.approx(flat(first["dictionaries"]["tied"]["curve"]),
                                                                         rel=1e-6, abs=1e-12)
    assert set(json.loads((out / "ioi.json").read_text())["dictionaries"]) == {"neuron", "tied"}

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match=r"other settings \(n_prompts\).*--overwrite"):
        patch_ioi(model=model, dicts=dicts, n_prompts=5, seed=1, out=str(out), names=NAMES.split(","))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc = cli.main(["patch-ioi", "--model", model, "--dict", *dicts, "--n-prompts", "5", "--seed", "1",
                   "--out", str(out), "--names", NAMES, "--overwrite"])
    assert rc == 0
    assert json.loads((out / "ioi.json").read_text())["n_prompts"] == 5


def test_resume_refuses_stale_or_foreign_results_before_writing(tiny_model_dirs, tmp_path, capsys, monkeypatch):
    """A killed --overwrite run leaves no old curves behind; same name from another folder, or a folder
    without a settings record, fails with one line and the folder untouched."""
    import shutil

    import causal.commands as commands
    from common.errors import UserError

    model = str(tiny_model_dirs["gpt_neox"])
    dicts = _dicts(tmp_path, "blocks.1.hook_resid_post")
    out = tmp_path / "out"
    run = dict(model=model, seed=1, out=str(out), names=NAMES.split(","))

    def patch_ioi(**kwargs):
        return commands.patch_ioi_command(PatchIOISettings(**kwargs))

    patch_ioi(dicts=dicts, n_prompts=4, **run)

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:  # an --overwrite run with other settings, killed right after writing its settings
        m.setattr(commands, "last_logits", killed)
        with pytest.raises(RuntimeError, match="killed"):
            patch_ioi(dicts=dicts, n_prompts=5, overwrite=True, **run)
    capsys.readouterr()
    result = patch_ioi(dicts=dicts, n_prompts=5, **run)
    assert "already in" not in capsys.readouterr().out  # nothing of the n_prompts=4 run is passed off as done
    assert result["n_prompts"] == 5 and set(result["dictionaries"]) == {"neuron", "tied"}

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "elsewhere" / "neuron"
    shutil.copytree(dicts[0], other)
    with pytest.raises(UserError, match=r"already has a result for a dictionary named 'neuron'.*--overwrite"):
        patch_ioi(dicts=[str(other), dicts[1]], n_prompts=5, **run)
    config = json.loads((out / "ioi_config.json").read_text())
    del config["identity"]  # as written by an older patch-ioi
    (out / "ioi_config.json").write_text(json.dumps(config))
    before["ioi_config.json"] = (out / "ioi_config.json").read_bytes()
    with pytest.raises(UserError, match="without a settings record"):
        patch_ioi(dicts=dicts, n_prompts=5, **run)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
