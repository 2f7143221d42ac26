"""Twin latents: live latents whose decoder directions nearly coincide, and the share of L0 they carry.

An L1 objective charges one latent's code c exactly what it charges two parallel latents' c/2 each, so a
dictionary can count one feature twice in its L0 at no cost; these tests pin the metric that shows it.
"""

from __future__ import annotations

import math

import torch

from sae.kinds.untied import UntiedSAE
from sae.metrics import TWIN_COSINE, quality_warnings, reconstruction_metrics, twin_metrics

D = 8


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def test_twins_by_hand():
    tilted = _unit([1.0, 0.3, 0, 0])  # cosine 0.958 with e0: a twin of it
    far = _unit([1.0, 0.6, 0, 0])  # cosine 0.857 with e0: not a twin at 0.9
    directions = torch.tensor([
        [1.0, 0, 0, 0],
        tilted,
        [0, 0, 1.0, 0],
        [0, 0, -1.0, 0],  # anti-parallel to the previous one: fires on opposite inputs, not a twin
        [1.0, 0, 0, 0],  # an exact copy of the first, but dead: a dead latent is nobody's twin
        [0, 0, 0, 1.0],
        [0, 0, 0, 3.0],  # a scaled copy of the previous one: direction, not length, decides
    ])
    rates = torch.tensor([0.2, 0.1, 0.3, 0.4, 0.0, 0.05, 0.15], dtype=torch.float64)
    m = twin_metrics(directions, rates)
    live_twins = [0, 1, 5, 6]
    assert m["twin_fraction"] == 4 / 6
    assert math.isclose(m["twin_l0_share"], float(rates[live_twins].sum() / rates.sum()), rel_tol=1e-12)
    no_tilt = directions.clone()
    no_tilt[1] = torch.tensor(far)
    assert twin_metrics(no_tilt, rates)["twin_fraction"] == 2 / 6  # only the scaled pair is left
    assert TWIN_COSINE == 0.9


def test_chunks_do_not_change_the_answer():
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(50, D, generator=g)
    directions[30] = directions[3] + 0.01 * torch.randn(D, generator=g)  # a twin across chunk boundaries
    rates = torch.rand(50, generator=g)
    whole = twin_metrics(directions, rates, chunk=1024)
    assert whole == twin_metrics(directions, rates, chunk=7)
    assert whole["twin_fraction"] >= 2 / 50


def _dictionary(copies: int, g: torch.Generator) -> UntiedSAE:
    """An untied SAE of 6 latents whose first `copies` + 1 latents are one latent repeated (encoder and decoder)."""
    w_e, w_d = torch.randn(6, D, generator=g), torch.randn(6, D, generator=g)
    for i in range(1, copies + 1):
        w_e[i], w_d[i] = w_e[0], w_d[0]
    return UntiedSAE({"W_e": w_e, "b_e": torch.zeros(6), "W_d": w_d, "b_d": torch.zeros(D)},
                     {"hook": "blocks.0.hook_resid_post", "model_id": "m", "d_in": D, "n_features": 6})


def test_reconstruction_metrics_report_twins_and_warn():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, D, generator=g)
    copied, clean = _dictionary(3, g), _dictionary(0, g)
    m_copied, m_clean = reconstruction_metrics([copied, clean], [x[:2000], x[2000:]])
    fired = (copied.encode(x) > 0).double().mean(0)
    assert math.isclose(m_copied["twin_l0_share"], float(fired[:4].sum() / fired.sum()), rel_tol=1e-9)
    assert m_copied["twin_fraction"] == 4 / int((fired > 0).sum())
    assert m_copied["twin_l0_share"] > 0.5
    assert any("near-duplicate" in w for w in quality_warnings(m_copied))
    cos = torch.nn.functional.cosine_similarity(clean.directions.unsqueeze(1), clean.directions.unsqueeze(0), dim=-1)
    assert (cos - torch.eye(6)).max() < TWIN_COSINE  # random rows in 8 dimensions: no twin, so nothing to warn
    assert m_clean["twin_l0_share"] == 0.0 and m_clean["twin_fraction"] == 0.0
    assert not any("near-duplicate" in w for w in quality_warnings(m_clean))
