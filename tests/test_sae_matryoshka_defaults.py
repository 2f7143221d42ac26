"""Matryoshka's defaults are the training setup measured to beat SAELens's Matryoshka (issue 29): a constant 1e-3
with no warm-up or decay from 2,000 steps on, rising as 1/sqrt(steps) in shorter runs (its registry row's `lr`,
`lr_rise_steps` and `lr_schedule`), free rows started at norm 0.1, and AuxK per level at weight 1 (`MatryoshkaSettings`). The other kinds keep theirs.

These check that the defaults reach the optimiser, not only the record: a run at the defaults has the weights of
the same run with every part passed as a flag, and another schedule or start gives other weights.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import cli
import sae
from common.errors import UserError
from common.options import from_namespace
from sae.registry import kind_spec, registered
from sae.settings import TrainSettings
from tests.support.sae_data import HOOK
from tests.test_sae_kindspec import TOY, TOY_ROW

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

# every part as a flag, for the 40-step runs below (so the rate is the short-run one, 1e-3 * sqrt(2000 / 40))
RECIPE = ["--lr", str(1e-3 * (2000 / 40) ** 0.5), "--lr-warmup", "0", "--lr-decay", "0", "--decoder-init-norm", "0.1",
          "--matryoshka-aux", "--auxk-alpha", "1"]
OLD = ["--lr", "5e-3", "--lr-warmup", "0.05", "--lr-decay", "0.2", "--decoder-init-norm", "1", "--no-matryoshka-aux",
       "--auxk-alpha", "0.03125"]


def settings(*argv: str) -> TrainSettings:
    args = cli.build_parser().parse_args(["train-sae", "--cache", "c.h5", "--hook", HOOK, "--out", "o", *argv])
    return from_namespace(TrainSettings, args)


def test_matryoshka_defaults_are_the_measured_setup_and_other_kinds_keep_theirs():
    m = settings("--kind", "matryoshka_batchtopk")
    assert [m.learning_rate, replace(m, tokens=10**9).learning_rate] == [1e-3, 1e-3]  # from 2,000 steps on
    assert replace(m, tokens=256 * 500).learning_rate == pytest.approx(2e-3)  # shorter: x sqrt(2,000 / steps)
    assert m.schedule == (0.0, 0.0)
    own = m.own_settings
    assert (own.decoder_norm, own.decoder_init_norm, own.matryoshka_aux, own.auxk_alpha) == ("free", 0.1, True, 1.0)
    record = m.public()
    assert (record["lr_warmup"], record["lr_decay"], record["decoder_init_norm"], record["auxk_alpha"]) == (0, 0, 0.1, 1)

    b = settings("--kind", "batchtopk", "--tokens", str(256 * 8000))
    assert b.schedule == (0.05, 0.2) and b.learning_rate == pytest.approx(5e-3 * 0.5)  # its falling rate
    assert (b.own_settings.decoder_init_norm, b.own_settings.auxk_alpha) == (1.0, 1 / 32)
    assert settings("--kind", "topk").own_settings.auxk_alpha == 1 / 32
    assert settings("--kind", "tied_sae").schedule == (0.05, 0.2)


def test_each_part_of_matryoshkas_defaults_is_a_flag_away():
    m = settings("--kind", "matryoshka_batchtopk", "--no-matryoshka-aux", "--lr-warmup", "0.1", "--decoder-norm",
                 "unit")
    assert m.schedule == (0.1, 0.0)  # the decay keeps the kind's default
    assert m.own_settings.matryoshka_aux is False
    assert m.own_settings.decoder_init_norm == 1.0  # unit rows start (and stay) at norm 1: no refusal
    m.validate()
    with pytest.raises(UserError, match="--matryoshka-aux is an option of --kind matryoshka_batchtopk only"):
        settings("--kind", "batchtopk", "--no-matryoshka-aux")
    with pytest.raises(UserError, match="--decoder-init-norm 0.1 needs --decoder-norm free"):
        settings("--kind", "matryoshka_batchtopk", "--decoder-norm", "unit", "--decoder-init-norm", "0.1").validate()


def _train(cache, out, *extra: str) -> sae.Dictionary:
    rc = cli.main(["train-sae", "--cache", str(cache), "--hook", HOOK, "--kind", "matryoshka_batchtopk", "--ratio",
                   "2", "--k", "4", "--batch-size", "64", "--tokens", str(64 * 40), "--matryoshka-prefixes", "0.25",
                   "--dead-tokens", "64", "--out", str(out), *extra])
    assert rc == 0
    return sae.load(out / "matryoshka_R2_k_4")


def test_a_matryoshka_trained_at_its_defaults_is_the_one_trained_with_the_recipes_flags(tiny_cache, tmp_path):
    default = _train(tiny_cache, tmp_path / "default")
    recipe = _train(tiny_cache, tmp_path / "recipe", *RECIPE)
    old = _train(tiny_cache, tmp_path / "old", *OLD)
    for name, tensor in default.tensors().items():
        assert torch.equal(tensor, recipe.tensors()[name]), name
    assert not torch.allclose(default.tensors()["W_d"], old.tensors()["W_d"], atol=1e-4)
    assert default.config["training"]["lr_warmup"] == 0 and old.config["training"]["lr_warmup"] == 0.05


def test_a_rows_schedule_reaches_the_optimiser_and_the_flags_win(tiny_cache, tmp_path):
    """A toy row whose default schedule is constant trains exactly as the standard toy row with both flags at 0."""
    def train(out, *extra: str) -> sae.Dictionary:
        assert cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--kind", TOY, "--ratio", "2",
                         "--l1", "1e-3", "--batch-size", "64", "--tokens", str(64 * 30), "--out", str(out),
                         *extra]) == 0
        return sae.load(out / "toy_sae_R2_l1_0.001")

    with registered(replace(TOY_ROW, lr_schedule=(0.0, 0.0))):
        constant = train(tmp_path / "constant")
        assert kind_spec(TOY).lr_schedule == (0.0, 0.0)
    with registered(TOY_ROW):  # the default schedule, 0.05 / 0.2
        standard = train(tmp_path / "standard")
        flags = train(tmp_path / "flags", "--lr-warmup", "0", "--lr-decay", "0")
    for name, tensor in constant.tensors().items():
        assert torch.equal(tensor, flags.tensors()[name]), name
    assert not torch.allclose(constant.tensors()["W_e"], standard.tensors()["W_e"], atol=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        replace(TOY_ROW, lr_schedule=(0.5, 0.6))
