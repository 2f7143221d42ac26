"""`cli.py ioi-layers`: the two exact endpoints of the whole-vector layer scan, on every family."""

from __future__ import annotations

import json

import pytest

import cli

NAMES = "John,Mary,Mar,Jo,Ber,Fr,Ger"


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama"])
def test_layer_scan_endpoints_are_exact(tiny_model_dirs, tmp_path, arch, capsys):
    out = tmp_path / "layers.json"
    rc = cli.main(["ioi-layers", "--model", str(tiny_model_dirs[arch]), "--n-prompts", "6", "--names", NAMES,
                   "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = {r["hook"]: r for r in result["rows"]}
    last = result["rows"][-1]
    # At the embeddings, copying the counterfactual name token turns the clean run into the counterfactual run.
    emb = rows["blocks.0.hook_resid_pre"]
    assert emb["kl_name_patch"] == pytest.approx(0.0, abs=1e-6)
    assert emb["carried_at_name"] == pytest.approx(1.0, abs=1e-4)
    # After the last block only the final position reaches the logits: patching it gives the cf logits,
    # patching the name position changes nothing.
    assert last["kl_end_patch"] == pytest.approx(0.0, abs=1e-6)
    assert last["kl_name_patch"] == pytest.approx(result["kl_clean_vs_counterfactual"], rel=1e-4)
    assert len(result["rows"]) == 1 + sum(h.endswith("hook_resid_post") for h in rows)
    # the suggestion follows the stated rule
    first = next(r for r in result["rows"] if r["carried_at_end"] >= r["carried_at_name"])
    assert result["suggested_hook"] == first["hook"]
    assert "<- suggested" in capsys.readouterr().out
