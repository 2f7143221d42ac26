"""A kind's default learning rate falls with the run's length beyond its row's `lr_steps` (issue 29).

The rule lives in the registry row (`KindSpec.lr_steps`), so these tests give
a toy row a short `lr_steps` and train it through `train-sae`: the default
for a run four times longer is half the row's rate, the weights are exactly
those of the same run with that rate passed as `--lr`, and `--lr` still wins.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import cli
import sae
from sae.registry import KindSpec, registered
from tests.support.sae_data import HOOK
from tests.test_sae_kindspec import TOY, TOY_ROW

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

SHORT_ROW = replace(TOY_ROW, lr_steps=20)  # lr 2e-3 up to 20 steps, 2e-3 * sqrt(20 / steps) beyond
BATCH = 64


def train(cache, out, steps: int, *extra: str) -> sae.Dictionary:
    rc = cli.main(["train-sae", "--cache", str(cache), "--hook", HOOK, "--kind", TOY, "--ratio", "2", "--l1", "1e-3",
                   "--batch-size", str(BATCH), "--tokens", str(BATCH * steps), "--out", str(out), *extra])
    assert rc == 0
    return sae.load(out / "toy_sae_R2_l1_0.001")


def test_a_run_four_times_past_lr_steps_trains_at_half_the_rows_rate_and_lr_still_wins(tiny_cache, tmp_path):
    with registered(SHORT_ROW):
        short = train(tiny_cache, tmp_path / "short", 20)
        assert short.config["training"]["lr"] == 2e-3  # up to lr_steps: the row's rate
        default = train(tiny_cache, tmp_path / "default", 80)
        assert default.config["training"]["lr"] == pytest.approx(1e-3, rel=1e-12)
        explicit = train(tiny_cache, tmp_path / "explicit", 80, "--lr", "1e-3")
        row_rate = train(tiny_cache, tmp_path / "row_rate", 80, "--lr", "2e-3")
    assert row_rate.config["training"]["lr"] == 2e-3  # --lr is taken as given
    # the default is what the optimiser ran at, not only what the config says: same weights as --lr 1e-3 ...
    for name, tensor in default.tensors().items():
        assert torch.equal(tensor, explicit.tensors()[name]), name
    # ... and not those of the row's own rate
    assert not torch.allclose(default.tensors()["W_e"], row_rate.tensors()["W_e"], atol=1e-5)


def test_a_run_four_times_shorter_than_lr_rise_steps_trains_at_twice_the_rows_rate(tiny_cache, tmp_path):
    """The mirror rule (Matryoshka's): a rate sized for long runs rises as 1/sqrt(steps) below `lr_rise_steps`."""
    with registered(replace(TOY_ROW, lr_rise_steps=80)):
        short = train(tiny_cache, tmp_path / "short", 20)
        assert short.config["training"]["lr"] == pytest.approx(4e-3, rel=1e-12)
        explicit = train(tiny_cache, tmp_path / "explicit", 20, "--lr", "4e-3")
        assert train(tiny_cache, tmp_path / "long", 80).config["training"]["lr"] == 2e-3
    for name, tensor in short.tensors().items():
        assert torch.equal(tensor, explicit.tensors()[name]), name
    with pytest.raises(ValueError, match="lr_rise_steps"):
        replace(TOY_ROW, lr_rise_steps=0)


def test_rows_without_lr_steps_keep_their_rate_at_every_length_and_a_bad_lr_steps_is_refused():
    assert TOY_ROW.default_lr(10) == TOY_ROW.default_lr(10**7) == 2e-3
    assert SHORT_ROW.default_lr(20) == 2e-3 and SHORT_ROW.default_lr(2000) == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="lr_steps"):
        replace(TOY_ROW, lr_steps=0)
    assert replace(TOY_ROW, lr_rise_steps=40).default_lr(10) == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="not learned"):
        KindSpec("basis", TOY_ROW.inference).default_lr(10)
