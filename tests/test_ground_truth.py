"""Recovery of known features (issue 29 item 6): MMCS, F1 and MCC on a planted cache that records its truth.

The planted cache has orthonormal true directions, so the dictionary whose encoder and decoder are those
directions encodes every token into exactly its true codes: its F1, MCC and MMCS are 1 by construction, not by
the code under test. A random dictionary of the same size must score far lower.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import cli
from activations.truth import has_truth, read_truth, sparse_rows, write_synthetic_cache
from sae.ground_truth import Classification, ground_truth_metrics, mean_correlation_coefficient
from sae.kinds.untied import UntiedSAE

HOOK = "blocks.0.hook_resid_post"
D, N_TRUE, N_CTX, CTX = 16, 12, 40, 16


def planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x [N_CTX, CTX, D], codes [N_CTX * CTX, N_TRUE], orthonormal truth [N_TRUE, D])."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.linalg.qr(torch.randn(D, N_TRUE, generator=g)).Q.T.contiguous()
    on = torch.rand(N_CTX * CTX, N_TRUE, generator=g) < 0.2
    codes = on * (0.5 + 0.5 * torch.rand(N_CTX * CTX, N_TRUE, generator=g))
    return (codes @ truth).reshape(N_CTX, CTX, D), codes, truth


@pytest.fixture
def planted_cache(tmp_path):
    x, codes, truth = planted()
    path = write_synthetic_cache(tmp_path / "planted.h5", x.numpy(), HOOK, "planted", truth, *sparse_rows(codes))
    plain = write_synthetic_cache(tmp_path / "plain.h5", x.numpy(), HOOK, "planted, truth not recorded")
    return {"path": path, "plain": plain, "codes": codes, "truth": truth}


def dictionary(w_e: torch.Tensor, w_d: torch.Tensor, bias: float = 0.0) -> UntiedSAE:
    n = w_e.shape[0]
    return UntiedSAE({"W_e": w_e, "b_e": torch.full((n,), bias), "W_d": w_d, "b_d": torch.zeros(D)},
                     {"hook": HOOK, "model_id": "synthetic", "d_in": D, "n_features": n})


def true_and_random(truth: torch.Tensor) -> tuple[UntiedSAE, UntiedSAE]:
    g = torch.Generator().manual_seed(1)
    random = torch.randn(N_TRUE, D, generator=g)
    # the small negative bias silences the float rounding of codes @ G @ Gᵀ where a code is 0 (codes are ≥ 0.5)
    return dictionary(truth, truth, bias=-1e-3), dictionary(random, random)


def test_the_cache_records_which_features_fire_at_each_token(planted_cache):
    assert has_truth(planted_cache["path"], HOOK) and not has_truth(planted_cache["plain"], HOOK)
    got = read_truth(planted_cache["path"], HOOK, (5, 9))
    tokens = np.arange(5 * CTX, 9 * CTX)
    assert torch.equal(got.dense(tokens), planted_cache["codes"][tokens] > 0)
    assert torch.allclose(got.directions, planted_cache["truth"])
    assert read_truth(planted_cache["plain"], HOOK, (0, 4)) is None


def test_the_true_dictionary_scores_one_and_a_random_one_low(planted_cache):
    true, random = true_and_random(planted_cache["truth"])
    best, worst = ground_truth_metrics([true, random], planted_cache["path"], HOOK, (0, N_CTX), tokens=10_000,
                                       skip_first=False)
    assert best["truth_f1"] == pytest.approx(1.0) and best["truth_mcc"] == pytest.approx(1.0, abs=1e-5)
    assert best["truth_mmcs"] == pytest.approx(1.0, abs=1e-5)
    assert best["truth_tokens"] == N_CTX * CTX and best["truth_features"] == N_TRUE
    assert worst["truth_f1"] < 0.5 and worst["truth_mcc"] < 0.8 and worst["truth_mmcs"] < 0.8


def test_tokens_left_out_are_left_out_of_the_counts(planted_cache):
    true, _ = true_and_random(planted_cache["truth"])
    got = ground_truth_metrics([true], planted_cache["path"], HOOK, (10, 20), tokens=100, skip_first=True)[0]
    assert got["truth_tokens"] == 100 and got["truth_f1"] == pytest.approx(1.0)


def test_mcc_is_the_best_one_to_one_matching_not_the_greedy_one():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    cos = (torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T).abs()
    brute = max(float(cos[list(range(5)), list(p)].mean()) for p in itertools.permutations(range(5)))
    assert mean_correlation_coefficient(a, b) == pytest.approx(brute, abs=1e-6)
    flipped = -b[[2, 0, 4, 1, 3]] * 3.0  # order, sign and scale do not matter
    assert mean_correlation_coefficient(flipped, b) == pytest.approx(1.0, abs=1e-6)


def test_f1_counts_each_latent_against_its_best_matching_feature():
    truth = torch.eye(3)
    latents = torch.tensor([[0.0, 0.9, 0.1], [1.0, 0.0, 0.0]])  # latent 0 ~ feature 1, latent 1 = feature 0
    counts = Classification(latents, truth)
    fires = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.float32)
    true = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.bool)
    counts.add(fires, true)
    # latent 0 vs feature 1: fires at tokens 0, 1; feature 1 at 0, 1, 3 -> P 1, R 2/3, F1 0.8
    # latent 1 vs feature 0: fires at 1, 2; feature 0 at 1 -> P 1/2, R 1, F1 2/3
    got = counts.scores()
    assert got["truth_precision"] == pytest.approx((1 + 0.5) / 2)
    assert got["truth_recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert got["truth_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_evaluate_shows_recovery_only_for_a_cache_with_its_truth(planted_cache, tmp_path, capsys):
    true, random = true_and_random(planted_cache["truth"])
    folders = [str(true.save(tmp_path / "true")), str(random.save(tmp_path / "random"))]
    rc = cli.main(["evaluate", "--cache", str(planted_cache["path"]), "--dict", *folders, "--no-model",
                   "--eval-fraction", "0.25"])
    assert rc == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("name"))
    assert {"true", "MMCS", "F1", "MCC"} <= set(header.split())
    stored = [json.loads((tmp_path / f / "config.json").read_text())["metrics"] for f in ("true", "random")]
    assert stored[0]["truth_f1"] == pytest.approx(1.0) and stored[1]["truth_f1"] < 0.5
    assert stored[0]["truth_tokens"] == 10 * (CTX - 1)  # the held-out quarter, position 0 left out as for FVU

    for f in folders:  # the same dictionaries on the same activations without the truth: no such columns
        (tmp_path / f / "config.json").write_text(json.dumps({**json.loads(
            (tmp_path / f / "config.json").read_text()), "metrics": {}}))
    rc = cli.main(["evaluate", "--cache", str(planted_cache["plain"]), "--dict", *folders, "--no-model",
                   "--eval-fraction", "0.25"])
    assert rc == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("name"))
    assert not {"F1", "MCC"} & set(header.split())
    assert "truth_f1" not in json.loads((tmp_path / "true" / "config.json").read_text())["metrics"]


def test_the_report_table_has_recovery_columns_only_where_measured(planted_cache, tmp_path):
    from report.build import build_report
    from tests.support.report_run import parse, table_with

    true, random = true_and_random(planted_cache["truth"])
    run = tmp_path / "run"
    folders = [true.save(run / "dicts" / "true"), random.save(run / "dicts" / "random")]
    page = parse(build_report(run, tmp_path / "before").read_text(encoding="utf-8"))
    assert "F1" not in table_with(page, "FVU")[0] and "MCC" not in table_with(page, "FVU")[0]
    assert cli.main(["evaluate", "--cache", str(planted_cache["path"]), "--dict", *map(str, folders),
                     "--no-model"]) == 0
    rows = table_with(parse(build_report(run, tmp_path / "after").read_text(encoding="utf-8")), "FVU")
    header = rows[0]
    by_name = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert {"true MMCS", "F1", "MCC"} <= set(header)
    assert float(by_name["true"]["F1"]) == pytest.approx(1.0) and float(by_name["random"]["F1"]) < 0.5
