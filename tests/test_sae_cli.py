"""The four subcommands on a real cache of a tiny model: train-sae, baselines, evaluate, export; kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cli
import sae
from activations.reader import ActivationCache
from sae.dictionaries import TiedSAE
from sae.errors import DictionaryError
from tests.support.sae_data import HOOK

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
MLP_HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dicts")
    rc = cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--ratio", "2", "--l1", "1e-4", "1e-3",
                   "--batch-size", "64", "--tokens", str(64 * 150), "--checkpoint-every", "40", "--lr", "1e-3",
                   "--out", str(out)])
    assert rc == 0
    return out


def test_train_sae_writes_one_folder_per_pair_with_full_config(trained, tiny_cache):
    names = sorted(p.name for p in trained.iterdir() if not p.name.startswith("."))
    assert names == ["tied_R2_l1_0.0001", "tied_R2_l1_0.001"]
    d = sae.load(trained / "tied_R2_l1_0.001")
    with ActivationCache(tiny_cache) as cache:
        model_id, width = cache.model_id, cache.width(HOOK)
    assert d.kind == "tied_sae" and d.hook == HOOK and d.d_in == width and d.n_features == 2 * width
    cfg = d.config
    assert cfg["model_id"] == model_id and cfg["l1"] == 1e-3 and cfg["ratio"] == 2.0
    assert cfg["training"]["batch_size"] == 64 and cfg["training"]["steps"] == 150 and cfg["training"]["lr"] == 1e-3
    m = cfg["metrics"]
    assert 0 < m["fvu"] < 1 and m["l0"] > 0 and 0 <= m["dead_fraction"] <= 1
    # larger α, sparser code
    assert sae.load(trained / "tied_R2_l1_0.0001").config["metrics"]["l0"] > m["l0"]
    assert not list(trained.glob(".train-*")), "the checkpoint is removed after a finished run"


def test_untied_training_on_mlp_neurons(tiny_cache, tmp_path):
    rc = cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", MLP_HOOK, "--ratio", "1", "--l1", "3e-4",
                   "--batch-size", "64", "--tokens", str(64 * 30), "--kind", "untied_sae", "--out", str(tmp_path)])
    assert rc == 0
    d = sae.load(tmp_path / "untied_R1_l1_0.0003")
    assert d.kind == "untied_sae" and d.d_in == 64 and d.n_features == 64
    assert set(d.tensors()) == {"W_e", "b_e", "W_d", "b_d"}


def test_baselines_then_evaluate_with_model_metrics_and_plot(trained, tiny_cache, tmp_path, capsys):
    base = tmp_path / "base"
    sae_dir = trained / "tied_R2_l1_0.001"
    k_expected = max(1, round(sae.load(sae_dir).config["metrics"]["l0"]))
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds",
                   "neuron,pca,ica,random,pca_topk,ica_topk", "--topk-from", str(sae_dir), "--out", str(base)])
    assert rc == 0
    kinds = {p.name: sae.load(p).kind for p in base.iterdir() if not p.name.startswith(".")}
    assert kinds == {"neuron": "neuron", "pca": "pca", "ica": "ica", "random": "random",
                     f"pca_topk_k{k_expected}": "pca_topk", f"ica_topk_k{k_expected}": "ica_topk"}
    assert sae.load(base / f"pca_topk_k{k_expected}").k == k_expected

    png = tmp_path / "frontier.png"
    dicts = [str(sae_dir), str(base / "pca"), str(base / "neuron"), str(base / f"pca_topk_k{k_expected}")]
    rc = cli.main(["evaluate", "--cache", str(tiny_cache), "--dict", *dicts, "--tokens", "800",
                   "--mmcs-to", str(base / "pca"), "--ce-contexts", "8", "--plot", str(png),
                   "--density-plot", str(tmp_path / "density.png")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and "tied_R2_l1_0.001" in printed and "KL" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = {Path(p).name: json.loads((Path(p) / "config.json").read_text())["metrics"] for p in dicts}
    with ActivationCache(tiny_cache) as cache:
        n_ctx, per_context = cache.n_contexts, cache.context_length - 1  # position 0 is excluded
    held_out = round(0.1 * n_ctx)  # the default split: the last 10% of contexts, never trained on
    for name, m in metrics.items():
        assert {"fvu", "l0", "dead_fraction", "mmcs", "kl", "ce_increase", "ce_loss_recovered",
                "explained_variance", "density"} <= set(m), name
        assert m["eval_tokens"] == held_out * per_context and m["kl"] >= 0 and m["ce_contexts"] == 6
        assert m["measured_on"]["split"] == "held-out" and m["measured_on"]["contexts"] == [n_ctx - held_out, n_ctx]
        assert m["measured_on"]["position_0"] == "excluded"
        n_features = sae.load(next(p for p in dicts if Path(p).name == name)).n_features
        assert sum(m["density"]["counts"]) + m["density"]["never_fired"] == n_features
    assert metrics["pca"]["mmcs"] == pytest.approx(1.0, abs=1e-5)  # PCA against itself
    assert metrics[f"pca_topk_k{k_expected}"]["l0"] <= k_expected
    assert metrics["tied_R2_l1_0.001"]["fvu"] < metrics["neuron"]["fvu"]


def test_model_metrics_are_zero_for_a_perfect_reconstruction(tiny_cache, tmp_path):
    """M = [I; −I] reconstructs exactly (ReLU(x) − ReLU(−x) = x); a dead dictionary reconstructs nothing."""
    with ActivationCache(tiny_cache) as cache:
        d, model_id = cache.width(HOOK), cache.model_id
    eye = torch.eye(d)
    cfg = {"hook": HOOK, "model_id": model_id, "d_in": d, "n_features": 2 * d}
    TiedSAE({"M": torch.cat([eye, -eye]), "b": torch.zeros(2 * d)}, cfg).save(tmp_path / "exact")
    TiedSAE({"M": torch.cat([eye, -eye]), "b": torch.full((2 * d,), -1e6)}, cfg).save(tmp_path / "dead")
    from sae.evaluate import evaluate_dictionaries

    rows = evaluate_dictionaries(tiny_cache, [str(tmp_path / "exact"), str(tmp_path / "dead")], tokens=512,
                                 ce_contexts=6, progress=False)
    exact, dead = rows
    assert exact["fvu"] < 1e-10 and exact["kl"] < 1e-6 and abs(exact["ce_increase"]) < 1e-5
    assert dead["l0"] == 0 and dead["dead_fraction"] == 1.0 and dead["fvu"] > 0.99
    assert dead["kl"] > 1e-3 and dead["ce_spliced"] != exact["ce_spliced"]
    # SAEBench's recovered fractions: a perfect reconstruction wins back all of the loss zero-ablation costs,
    # a dead one (it decodes to 0, i.e. zero ablation) none of it
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4) and exact["kl_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert dead["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6) and dead["kl_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert exact["explained_variance"] == pytest.approx(1.0, abs=1e-8) and dead["explained_variance"] < 0.01
    # tokens over the sink limit are left out of the metrics and left untouched by the splice: with the limit at
    # the median norm about half the tokens are out, so the dead dictionary loses less
    _, half = evaluate_dictionaries(tiny_cache, [str(tmp_path / "exact"), str(tmp_path / "dead")], tokens=512,
                                    ce_contexts=6, progress=False, sink_factor=1.0)
    assert 0.3 * dead["eval_tokens"] < half["eval_tokens"] < 0.7 * dead["eval_tokens"]
    assert 0 < half["kl"] < dead["kl"]
    assert half["measured_on"]["sink_norm_limit"] > 0


def test_dictionary_of_the_wrong_width_fails_clearly(tiny_cache, tmp_path, capsys):
    cfg = {"hook": HOOK, "d_in": 16, "n_features": 32}
    folder = TiedSAE({"M": torch.randn(32, 16), "b": torch.zeros(32)}, cfg).save(tmp_path / "narrow")
    from sae.evaluate import evaluate_dictionaries  # the command line: a row of tests/test_bad_inputs_earlier.py

    with pytest.raises(DictionaryError):
        evaluate_dictionaries(tiny_cache, [str(folder)], no_model=True, progress=False)


def test_topk_controls_for_several_k_share_one_fit_and_extend_an_existing_folder(tiny_cache, tmp_path):
    base = tmp_path / "base"
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "pca,pca_topk",
                   "--k", "3", "7", "--out", str(base)])
    assert rc == 0
    assert sorted(p.name for p in base.iterdir()) == ["pca", "pca_topk_k3", "pca_topk_k7"]
    pca_bytes = (base / "pca" / "weights.safetensors").read_bytes()
    x = torch.randn(50, sae.load(base / "pca").d_in)
    for k in (3, 7):
        control = sae.load(base / f"pca_topk_k{k}")
        assert control.k == k
        assert int((control.encode(x) > 0).sum(dim=-1).max()) <= k
        assert torch.allclose(control.directions, sae.load(base / "pca").directions)  # same fitted basis
    # a later run with one more k adds its folder and leaves the finished ones as they were
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "pca,pca_topk",
                   "--k", "3", "5", "--out", str(base)])
    assert rc == 0
    assert sorted(p.name for p in base.iterdir()) == ["pca", "pca_topk_k3", "pca_topk_k5", "pca_topk_k7"]
    assert (base / "pca" / "weights.safetensors").read_bytes() == pca_bytes


def test_ica_samples_bounds_the_ica_fit_only(tiny_cache, tmp_path, capsys):
    base = tmp_path / "base"
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "pca,ica",
                   "--ica-samples", "300", "--out", str(base)])
    assert rc == 0
    assert sae.load(base / "ica").config["n_tokens_fitted"] == 300
    assert sae.load(base / "pca").config["fit"]["tokens"] > 300  # PCA still streams every token
    # --ica-samples 1: a row of tests/test_bad_inputs_earlier.py


def test_topk_from_a_sae_denser_than_the_layer_is_skipped_with_a_note(tiny_cache, tmp_path, capsys):
    with ActivationCache(tiny_cache) as cache:
        d, model_id = cache.width(HOOK), cache.model_id
    cfg = {"hook": HOOK, "model_id": model_id, "d_in": d, "n_features": 2 * d}
    folders = []
    for name, l0 in (("dense", d + 5.0), ("sparse", 3.0)):
        folder = TiedSAE({"M": torch.randn(2 * d, d), "b": torch.zeros(2 * d)}, {**cfg, "metrics": {"l0": l0}})
        folders.append(str(folder.save(tmp_path / name)))
    base = tmp_path / "base"
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "pca_topk",
                   "--topk-from", *folders, "--out", str(base)])
    assert rc == 0
    assert sorted(p.name for p in base.iterdir()) == ["pca_topk_k3"]
    assert f"no top-k control for mean L0 {d + 5}" in capsys.readouterr().out
    # only SAEs denser than the layer: a row of tests/test_bad_inputs_earlier.py


def test_export_saelens_from_the_cli(trained, tmp_path):
    out = tmp_path / "exported"
    assert cli.main(["export", "--dict", str(trained / "tied_R2_l1_0.001"), "--out", str(out)]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == HOOK and cfg["d_sae"] == 64 and cfg["architecture"] == "standard"


def _check_saelens_matches(folder: Path) -> None:
    """The export beside a dictionary computes its encode and decode (SAELens's formulas, apply_b_dec_to_input=False)."""
    from safetensors.torch import load_file

    d = sae.load(folder)
    cfg = json.loads((folder / "saelens" / "cfg.json").read_text())
    w = load_file(str(folder / "saelens" / "sae_weights.safetensors"))
    assert cfg["d_in"] == d.d_in and cfg["d_sae"] == d.n_features and cfg["hook_name"] == HOOK
    x = torch.randn(40, d.d_in)
    c = torch.relu(x @ w["W_enc"] + w["b_enc"])
    if cfg.get("k") is not None:
        from sae.dictionaries import top_k

        c = top_k(c, cfg["k"])
    torch.testing.assert_close(c, d.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c @ w["W_dec"] + w["b_dec"], d.decode(c), atol=1e-5, rtol=1e-5)


def test_train_sae_and_baselines_export_saelens_beside_each_dictionary(tiny_cache, tmp_path):
    out = tmp_path / "sae"
    rc = cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--ratio", "2", "--l1", "1e-4", "1e-3",
                   "--batch-size", "64", "--tokens", str(64 * 10), "--out", str(out), "--export", "saelens"])
    assert rc == 0
    for name in ("tied_R2_l1_0.0001", "tied_R2_l1_0.001"):
        _check_saelens_matches(out / name)
    base = tmp_path / "base"
    rc = cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "neuron,signed_neuron,pca,pca_topk",
                   "--k", "3", "--out", str(base), "--export", "saelens"])
    assert rc == 0
    assert sae.load(base / "signed_neuron").kind == "signed_neuron"
    for name in ("neuron", "signed_neuron", "pca", "pca_topk_k3"):
        _check_saelens_matches(base / name)
    assert json.loads((base / "pca_topk_k3" / "saelens" / "cfg.json").read_text())["architecture"] == "topk"
    # without --export nothing extra is written
    plain = tmp_path / "plain"
    assert cli.main(["baselines", "--cache", str(tiny_cache), "--hook", HOOK, "--kinds", "neuron", "--out", str(plain)]) == 0
    assert not (plain / "neuron" / "saelens").exists()


STEPS = 3000  # long enough after the first checkpoint that a loaded machine still sees it before the end


def _train_args(cache: Path, out: Path) -> list[str]:
    return ["train-sae", "--cache", str(cache), "--hook", HOOK, "--ratio", "1", "2", "--l1", "1e-4", "1e-3",
            "--batch-size", "32", "--tokens", str(32 * STEPS), "--checkpoint-every", "50", "--out", str(out)]


@pytest.mark.slow  # a run killed mid-way and resumed
def test_kill_9_then_rerun_ends_bit_identical(tiny_cache, tmp_path):
    """A real process is SIGKILLed after its first checkpoint; the rerun must end where an uninterrupted run ends.

    The rerun and the uninterrupted run go through cli.main in this process (single-threaded like the
    child), which keeps the test fast; the kill itself needs the separate process.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *_train_args(tiny_cache, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    try:
        while not list(killed.glob(".train-*/state.json")):
            assert proc.poll() is None, "training finished or failed before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    [state] = list(killed.glob(".train-*/state.json"))
    step = json.loads(state.read_text())["step"]
    assert 0 < step < STEPS, step
    assert not (killed / "tied_R2_l1_0.001").exists()

    assert cli.main(_train_args(tiny_cache, killed)) == 0
    whole = tmp_path / "whole"
    assert cli.main(_train_args(tiny_cache, whole)) == 0
    names = sorted(p.name for p in whole.iterdir() if not p.name.startswith("."))
    assert len(names) == 4
    for name in names:
        a, b = sae.load(killed / name), sae.load(whole / name)
        assert a.config["metrics"]["resumed_from_step"] > 0 and b.config["metrics"]["resumed_from_step"] == 0
        for key in a.tensors():
            assert torch.equal(a.tensors()[key], b.tensors()[key]), (name, key)
    assert not list(killed.glob(".train-*")), "the finished rerun removes its checkpoint"


def test_evaluate_reads_a_saelens_folder_without_writing_into_it(trained, tiny_cache, tmp_path, capsys):
    exported = tmp_path / "from_saelens"
    assert cli.main(["export", "--dict", str(trained / "tied_R2_l1_0.001"), "--out", str(exported)]) == 0
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    assert cli.main(["evaluate", "--cache", str(tiny_cache), "--dict", str(exported), "--no-model"]) == 0
    out = capsys.readouterr().out
    assert "saelens folder; its metrics are printed, not stored" in out and "from_saelens" in out
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before
