"""A new trainable kind is its module and one registry row (issue 26 item 1).

`ToySAE` / `ToyStack` below are a kind no module of the toolkit knows: an
untied SAE without decoder bias whose decoder rows are free (not normalised)
and whose L1 is weighted by the decoder norms, as SAELens's standard SAE.
`ToySettings` is its own hyperparameter (a factor on its L1 term). One
`KindSpec` row, registered for the test alone, is all it gets; it then
trains (its knob a `train-sae` flag that reaches the objective), evaluates,
explains (token-lookup explainer and simulator, no LLM) and exports through
the real command line.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import cli
import sae
from common.options import option
from sae.kinds.affine import AffineDictionary, unit_rows
from sae.kinds.stack import StackOptions, SweepStack, xavier
from sae.registry import (L1_SWEEP, KindSpec, kind_names, learned_kinds, objective_class, registered, settings_class,
                          specs)
from tests.support.sae_data import HOOK

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

TOY = "toy_sae"


class ToySAE(AffineDictionary):
    """c = ReLU(W_e x + b_e), x̂ = c W_d. In effective form the codes carry the decoder norms, so D has unit rows."""

    kind = TOY
    tensor_shapes = {"W_e": ("F", "d"), "b_e": ("F",), "W_d": ("F", "d")}

    def _compute_effective(self):
        t = self._tensors
        norms = t["W_d"].norm(dim=-1).clamp_min(1e-12)
        return t["W_e"] * norms[:, None], t["b_e"] * norms, unit_rows(t["W_d"]), torch.zeros(self.d_in)


@dataclass
class ToySettings:
    """The toy kind's own knob: it becomes `--toy-l1-scale` of train-sae and reaches `ToyStack` as kind_settings."""

    toy_l1_scale: float = option(1.0, help="factor on the toy kind's L1 term")


class ToyStack(SweepStack):
    """MSE + s·α·Σ_j c_j‖W_d,j‖ (decoder-norm-weighted L1, s its own `toy_l1_scale`); one model per α."""

    kind = TOY
    bias_names = ("b_e",)

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        n, f = len(self.values), self.n_features
        self.register_buffer("alpha", torch.tensor(self.values, dtype=torch.float32))
        self.W_e = nn.Parameter(torch.stack([xavier(f, d_in, g) for g in self.generators()]))
        self.b_e = nn.Parameter(torch.zeros(n, f))
        self.W_d = nn.Parameter(self.W_e.detach().clone())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        n, batch = len(self.values), x.shape[0]
        xs = x.unsqueeze(0).expand(n, batch, self.d_in)
        c = torch.relu(torch.baddbmm(self.b_e.unsqueeze(1), xs, self.W_e.transpose(1, 2)))
        x_hat = torch.bmm(c, self.W_d)
        mse = (x_hat - xs).pow(2).mean(dim=(1, 2))
        l1 = (c * self.W_d.norm(dim=-1).unsqueeze(1)).sum(dim=(1, 2)) / batch
        return {"loss": mse + self.kind_settings.toy_l1_scale * self.alpha * l1, "mse": mse, "l1": l1, "c": c,
                "x_hat": x_hat}


TOY_ROW = KindSpec(TOY, ToySAE, ToyStack, L1_SWEEP, lr=2e-3, settings=ToySettings, marker="h")


def test_a_toy_kind_trains_evaluates_explains_and_exports_through_the_cli_with_one_row(tiny_cache, tmp_path, capsys):
    out = tmp_path / "dicts"
    with registered(TOY_ROW):
        assert TOY in learned_kinds() and kind_names()[-1] == TOY
        rc = cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--kind", TOY, "--ratio", "2",
                       "--l1", "1e-3", "3e-2", "--batch-size", "64", "--tokens", str(64 * 80), "--export", "saelens",
                       "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        assert names == ["toy_sae_R2_l1_0.001", "toy_sae_R2_l1_0.03"]  # the row's sweep names the folders
        dense, sparse = (sae.load(out / n) for n in names)
        assert isinstance(dense, ToySAE) and dense.kind == TOY
        training = dense.config["training"]
        assert dense.config["l1"] == 1e-3 and training["kind"] == TOY and training["lr"] == 2e-3  # the row's lr
        assert "ks" not in training and "auxk_alpha" not in training  # other kinds' knobs are not recorded
        assert training["toy_l1_scale"] == 1.0  # its own knob is, at its default
        assert 0 < dense.config["metrics"]["fvu"] < 1 and dense.config["metrics"]["l0"] > sparse.config["metrics"]["l0"]

        # folding the input scale and the decoder norms into the saved form keeps encode/decode exact
        x = torch.randn(16, dense.d_in) * 3
        t = dense.tensors()
        codes = torch.relu(x @ t["W_e"].T + t["b_e"])
        assert torch.allclose(dense.decode(dense.encode(x)), codes @ t["W_d"], atol=1e-4)

        png = tmp_path / "frontier.png"
        rc = cli.main(["evaluate", "--cache", str(tiny_cache), "--dict", str(out / names[0]), str(out / names[1]),
                       "--tokens", "512", "--no-model", "--plot", str(png)])
        assert rc == 0 and png.stat().st_size > 0
        assert "evaluated_on" in sae.load(out / names[0]).config["metrics"]

        explained = tmp_path / "explained"
        rc = cli.main(["explain", "--cache", str(tiny_cache), "--dict", str(out / names[0]), "--features", "3",
                       "--explainer", "tokens", "--simulator", "tokens", "--out", str(explained)])
        assert rc == 0, capsys.readouterr().err
        records = [json.loads(line) for line in (explained / "explanations.jsonl").read_text().splitlines()]
        assert len(records) == 3 and {r["kind"] for r in records} == {TOY}
        assert all(r["status"] == "ok" and r["explanation"] and r["scores"]["top_and_random"] is not None
                   for r in records)  # explained and scored by the token-lookup simulator

        exported = tmp_path / "exported"
        assert cli.main(["export", "--dict", str(out / names[0]), "--out", str(exported)]) == 0
        cfg = json.loads((exported / "cfg.json").read_text())
        assert cfg["dictlens_kind"] == TOY and cfg["architecture"] == "standard"
        assert (out / names[0] / "saelens" / "cfg.json").exists()  # --export at training time too
        again = sae.load(exported)  # SAELens's layout, read back: the same codes
        assert torch.allclose(again.encode(x), dense.encode(x), atol=1e-4)
    assert TOY not in kind_names() and TOY not in learned_kinds()  # the table is restored
    with pytest.raises(SystemExit):  # argparse: not a --kind choice any more
        cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--kind", TOY, "--out", str(out)])


def test_the_toy_kinds_own_knob_is_a_flag_that_reaches_its_objective_and_only_its_own(tiny_cache, tmp_path, capsys):
    """`--toy-l1-scale 0` switches the toy's L1 term off: the same α then gives a denser dictionary, and the
    value is recorded; the flag is refused for another kind, and other kinds' flags are refused for the toy."""
    base = ["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--ratio", "2", "--l1", "3e-2", "--batch-size",
            "64", "--tokens", str(64 * 80)]
    with registered(TOY_ROW):
        with pytest.raises(SystemExit):
            cli.main(["train-sae", "--help"])
        assert "--toy-l1-scale TOY_L1_SCALE" in capsys.readouterr().out
        runs = {}
        for scale in ("1", "0"):
            out = tmp_path / f"scale{scale}"
            assert cli.main(base + ["--kind", TOY, "--toy-l1-scale", scale, "--out", str(out)]) == 0
            runs[scale] = sae.load(out / "toy_sae_R2_l1_0.03").config
        assert runs["0"]["training"]["toy_l1_scale"] == 0.0 and runs["1"]["training"]["toy_l1_scale"] == 1.0
        free, pressed = runs["0"]["metrics"], runs["1"]["metrics"]
        assert free["l0"] > pressed["l0"] + 5 and free["fvu"] < pressed["fvu"]  # no L1 pressure: denser, closer
        capsys.readouterr()
        assert cli.main(base + ["--kind", "tied_sae", "--toy-l1-scale", "0", "--out", str(tmp_path / "t")]) == 2
        assert "--toy-l1-scale is an option of --kind toy_sae only" in capsys.readouterr().err
        assert cli.main(base + ["--kind", TOY, "--dead-tokens", "5", "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert "--dead-tokens is an option of --kind topk, --kind batchtopk" in err and "matryoshka" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "d").exists()  # refused before anything was written


def test_every_learned_row_names_classes_of_its_kind_and_settings_fields_that_exist():
    from sae.settings import TrainSettings

    train_fields = {f.name for f in fields(TrainSettings)}
    for spec in specs():
        assert sae.registry.kind_class(spec.name).kind == spec.name
        if spec.learned:
            assert objective_class(spec.name).kind == spec.name and spec.lr > 0
            assert spec.sweep.field in train_fields
            own = settings_class(spec.name)
            if own is not None:  # its own knobs: options of a dataclass of their own, none shadowing a shared one
                names = {f.name for f in fields(own) if "option" in f.metadata}
                assert names and not names & train_fields, spec.name
                settings = TrainSettings(hook="h", kind=spec.name)
                assert set(names) <= set(settings.public())  # recorded for this kind
                others = [k for k in learned_kinds() if settings_class(k) is None]
                assert not set(names) & set(TrainSettings(hook="h", kind=others[0]).public())  # and not for others
        if spec.topk_control_of is not None:
            assert spec.fitted and sae.registry.kind_spec(spec.topk_control_of).fitted


def test_library_sink_factor_defaults_are_the_settings():
    """Issue 26 item 4's concrete bug: the library functions said 0.0 where the commands say 20.0."""
    from sae.data import split_cache
    from sae.evaluate import evaluate_dictionaries
    from sae.fit_baselines import fit_baselines_from_cache
    from sae.settings import BaselinesSettings, EvaluateSettings, TrainSettings

    for function, settings in ((split_cache, TrainSettings), (evaluate_dictionaries, EvaluateSettings),
                               (fit_baselines_from_cache, BaselinesSettings)):
        default = inspect.signature(function).parameters["sink_factor"].default
        assert default == settings.sink_factor == 20.0, function.__name__


def test_marker_and_report_order_come_from_the_row():
    from sae.plot import _marker
    from sae.registry import kind_order

    with registered(TOY_ROW):
        assert _marker(TOY) == "h" and kind_order(TOY) == len(kind_names()) - 1
    assert _marker(TOY) == "o" and kind_order(TOY) == len(kind_names())
    assert Path(inspect.getsourcefile(ToyStack)) == Path(__file__)  # the kind lives in this test file alone
