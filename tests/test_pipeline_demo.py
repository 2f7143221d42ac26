"""`cli.py demo` end to end on a tiny saved model: every stage, the report, skip-on-rerun, settings guard.

The real demo runs SmolLM2 on Wikipedia for ~15 minutes; here the same code
path runs on a tiny random GPT-NeoX with a small corpus and small settings
(only the sizes differ), with the LLM stage off (a tiny model has no room
for an explainer prompt; the LLM path is explain's own test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import stat
from pathlib import Path

import pytest

import cli
from pipeline.demo import DemoError, _llm_feature_ids, choose_sae, run_demo
from pipeline.settings import DemoSettings
from tests.support.tiny_models import TRAIN_TEXT

NAMES = ["John", "Mary", "Mar", "Jo", "Ber", "Fr", "Ger"]


def _settings(model: Path, corpus: Path, **over) -> DemoSettings:
    base = dict(model=str(model), corpus=str(corpus), layer=1, context_length=32, train_cache_tokens=4096,
                fragment_length=16, fragments=100, cache_batch_size=16, dtype="float32", sae_tokens=4096,
                sae_batch_size=64, baseline_tokens=2048, eval_tokens=2048, ce_contexts=4, target_l0=5.0,
                features=6, llm="none", ioi_prompts=4, ioi_candidates=8, ioi_names=NAMES, progress=False)
    return DemoSettings(**{**base, **over})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    docs = [" ".join(rng.choice(TRAIN_TEXT) for _ in range(4)) for _ in range(120)]
    docs[3] = "A <script>document.body.setAttribute('data-pwned','1')</script> tag. " + docs[3]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def _demo(model: Path, corpus: Path, run: Path):
    settings = _settings(model, corpus)
    old = os.umask(0o022)  # a common umask, so the permissions test knows what to expect
    try:
        index = run_demo(settings, run)
    finally:
        os.umask(old)
    return run, index, settings


@pytest.fixture(scope="module")
def demo_run(tiny_model_dirs, corpus, tmp_path_factory):
    """The run the module's tests read; a test that changes a run makes its own (`demo_run_to_rerun`)."""
    return _demo(tiny_model_dirs["gpt_neox"], corpus, tmp_path_factory.mktemp("demo") / "run")


@pytest.fixture
def demo_run_to_rerun(tiny_model_dirs, corpus, tmp_path):
    """A run of its own for the rerun test, so no other test reads a folder that was rerun (or not) before it.
    (Not a copy of `demo_run`: the stages record absolute paths, and a copy is rightly refused as another run.)"""
    return _demo(tiny_model_dirs["gpt_neox"], corpus, tmp_path / "run")


@pytest.mark.slow  # the whole demo, every stage
def test_every_file_of_the_run_follows_the_users_umask_and_no_lock_is_left(demo_run):
    """Caches, dictionaries, explanation and IOI folders, the report: shareable like any file the user makes
    (not mkdtemp's 0700 / safetensors' 0600), and every stage let go of its output."""
    run, _, _ = demo_run
    wrong = []
    for folder, dirs, files in os.walk(run):
        for name in dirs:
            if stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) != 0o755:
                wrong.append(os.path.join(folder, name))
        for name in files:
            if stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) != 0o644:
                wrong.append(os.path.join(folder, name))
            assert not name.endswith(".lock") and name != ".dictlens.lock", os.path.join(folder, name)
    assert wrong == []


@pytest.mark.slow  # the whole demo, every stage
def test_demo_runs_every_stage_and_writes_the_report(demo_run):
    run, index, settings = demo_run
    assert index == run / "report" / "index.html" and index.exists()
    stages = sorted(p.stem for p in (run / "stages").glob("*.json"))
    assert stages == ["01_cache_train", "02_cache_fragments", "03_train_sae", "04_baselines", "05_evaluate",
                      "06_explain_tokens", "08_compare", "09_patch_ioi", "10_report"]
    assert not list((run / "stages").glob("*.started"))
    assert json.loads((run / "demo_settings.json").read_text())["hook"] == "blocks.1.hook_resid_post"
    saes = [run / "dicts" / f"tied_R2_l1_{a:g}" for a in settings.l1s]
    for folder in saes + [run / "dicts" / k for k in settings.baselines]:
        metrics = json.loads((folder / "config.json").read_text())["metrics"]
        assert "kl" in metrics and metrics["fvu"] >= 0  # evaluate ran with the model
    records = [json.loads(line) for line in (run / "explanations" / "tokens" / "explanations.jsonl").open()]
    chosen = choose_sae(saes, settings.target_l0)
    assert {r["dictionary"] for r in records} == {chosen.name, *settings.baselines}
    assert len(records) == settings.features * (1 + len(settings.baselines))
    ioi = json.loads((run / "ioi" / "ioi.json").read_text())
    assert set(ioi["dictionaries"]) == {chosen.name, "pca"}
    html = index.read_text(encoding="utf-8")
    assert html.count('class="feature-card') == sum(r["status"] in ("ok", "failed") for r in records)
    # the page's load check, the feature table's script and its JSON data block: no corpus script
    assert html.count("<script") == 3 and "was not run" not in html
    dict_names = {p.name for p in (run / "dicts").iterdir() if (p / "weights.safetensors").exists()}
    assert {p.name for p in (run / "report" / "features").iterdir() if p.is_dir()} == dict_names  # pages, every basis


@pytest.mark.slow  # the whole demo, every stage
def test_demo_rerun_skips_finished_stages_and_redoes_only_an_unmarked_one(demo_run_to_rerun, capsys):
    run, _, settings = demo_run_to_rerun
    markers = {p.name: p.read_text() for p in (run / "stages").glob("*.json") if p.stem != "10_report"}
    weights = run / "dicts" / "pca" / "weights.safetensors"
    mtime = weights.stat().st_mtime_ns
    ioi_before = json.loads((run / "ioi" / "ioi.json").read_text())
    (run / "stages" / "09_patch_ioi.json").unlink()
    capsys.readouterr()
    run_demo(settings, run)
    out = capsys.readouterr().out
    assert out.count("done earlier") == 7
    assert "IOI patching with" in out and "report: " in out
    assert weights.stat().st_mtime_ns == mtime
    for name, text in markers.items():
        if name != "09_patch_ioi.json":
            assert (run / "stages" / name).read_text() == text
    ioi_after = json.loads((run / "ioi" / "ioi.json").read_text())
    for name, entry in ioi_before["dictionaries"].items():  # same seed, same curves
        assert ioi_after["dictionaries"][name]["curve"] == entry["curve"]


@pytest.mark.slow  # the whole demo, every stage
def test_demo_refuses_a_run_folder_with_other_settings(demo_run, tiny_model_dirs, corpus):
    run, _, settings = demo_run
    before = (run / "demo_settings.json").read_text()
    with pytest.raises(DemoError, match="features: demo_settings.json has 6, command asks 7"):
        run_demo(_settings(tiny_model_dirs["gpt_neox"], corpus, features=7), run)
    assert (run / "demo_settings.json").read_text() == before
    (run.parent / "other").mkdir()
    (run.parent / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="not empty"):
        run_demo(settings, run.parent / "other")


def test_choose_sae_takes_the_l0_nearest_the_target_on_a_log_scale(tmp_path):
    folders = []
    for name, l0 in (("a", 80.0), ("b", 11.0), ("c", 0.0), ("d", 45.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"metrics": {"l0": l0}}))
        folders.append(tmp_path / name)
    # |log 11 - log 20| = 0.598 < |log 45 - log 20| = 0.811; L0 = 0 (all dead) is never chosen
    assert choose_sae(folders, 20.0).name == "b"
    with pytest.raises(DemoError, match="dead"):
        choose_sae([folders[2]], 20.0)


def test_llm_features_are_the_first_ok_features_of_that_dictionary(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    rows = [(mine, 9, "ok"), (mine, 2, "skipped"), (other, 1, "ok"), (mine, 5, "ok"), (mine, 7, "failed"),
            (mine, 3, "ok")]
    (tmp_path / "explanations.jsonl").write_text("".join(
        json.dumps({"dictionary_path": str(d.resolve()), "feature": f, "status": s}) + "\n" for d, f, s in rows))
    assert _llm_feature_ids(tmp_path, mine, 2) == [3, 5]
    assert _llm_feature_ids(tmp_path, mine, 10) == [3, 5, 9]


def test_cli_demo_and_report_are_built_from_their_settings_classes():
    """Each flag is a field of the settings class the function takes; the demo has exactly its four flags."""
    from pipeline.settings import DemoSettings
    from report.settings import ReportSettings

    parser = cli.build_parser()
    for argv, cls, flags in ((["demo"], DemoSettings, {"out", "llm", "base_url", "device"}),
                             (["report", "--run", "x"], ReportSettings,
                              {"run", "out", "descriptors", "features_cache", "max_features", "allow_model_mismatch"})):
        args = vars(parser.parse_args(argv))
        command = args.pop("_command")
        assert command.settings == f"{cls.__module__}:{cls.__name__}"
        args.pop("command")
        assert set(args) == flags
        options = {f.name for f in dataclasses.fields(cls) if "option" in f.metadata}
        assert options == flags
    demo = DemoSettings(**{k: v for k, v in vars(parser.parse_args(["demo", "--llm", "none"])).items()
                           if k in {"out", "llm", "base_url", "device"}})
    assert demo.llm == "none" and demo.out == "runs/demo" and "out" not in demo.to_json()
