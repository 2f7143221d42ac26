"""The table of bad inputs: the refusals of earlier issues (13, 14 and before), kept here so that the table is the
one place to look. Most were tests of their own in the stage modules (test_activations_cache, _hardening,
test_causal_command, _layers, test_explain_descriptors, test_report_*, test_sae_cli, _train,
test_pipeline_demo, _hardening), moved here as rows with what they asserted: `alone` where they checked
that stderr was the one line, `prepare=no_model_load(...)` where they checked that nothing was loaded first.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.bad_inputs import HOOK, NAMES, Inputs, Row, check_row, no_model_load, params


def _train(i: Inputs, *extra: str) -> list[str]:
    return ["train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--tokens", "256", "--batch-size", "32",
            "--out", str(i.out), *extra]


def _explain(i: Inputs, *extra: str) -> list[str]:
    return ["explain", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--out", str(i.out), *extra]


def _cache(i: Inputs, **override: str) -> list[str]:
    """A cache command whose model does not exist: each of these is refused before the model would load."""
    args = {"--model": str(i.root / "no-such-model"), "--corpus": str(i.corpus), "--hooks": "blocks.0.hook_resid_pre",
            "--context-length": "16", "--max-tokens": "64", "--batch-size": "2", "--out": str(i.out / "c.h5")}
    args.update({"--" + k.replace("_", "-"): v for k, v in override.items()})
    return ["cache", *[x for kv in args.items() for x in kv]]


def _patch(i: Inputs, *dicts: str, model: str = "", out: str = "", extra: tuple[str, ...] = ()) -> list[str]:
    return ["patch-ioi", "--model", model or str(i.model_a), "--dict", *dicts, "--out", out or str(i.out),
            "--names", NAMES, *extra]


def _cuda(command: str) -> Row:
    """`--device cuda` on a machine without CUDA: one line before any model loads."""
    def args(i: Inputs) -> list[str]:
        return {
            "cache": ["cache", "--hooks", HOOK, "--out", str(i.out / "c.h5")],
            "patch-ioi": ["patch-ioi", "--dict", str(i.root / "no-dict"), "--out", str(i.out)],
            "ioi-layers": ["ioi-layers"],
            "demo": ["demo", "--out", str(i.out)],
            "train-sae": ["train-sae", "--cache", str(i.root / "no-cache.h5"), "--hook", HOOK, "--out", str(i.out)],
        }[command] + ["--device", "cuda"]
    return Row(f"{command}: --device cuda without CUDA", args,
               "--device cuda asked for but CUDA is not available here: use --device cpu", prepare=no_model_load(),
               marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="the message shown where CUDA is missing"),))


NO_CACHE_MODEL = no_model_load("activations.cache_writer")

ROWS = [
    # -- cache (test_activations_cache, test_activations_hardening) --------------------------------------------------
    Row("cache: a corpus of an unknown type (.tsv)", lambda i: _cache(i, corpus=str(i["tsv"])),
        "unknown type: use .txt, .jsonl", alone=True, prepare=NO_CACHE_MODEL),
    Row("cache: --context-length 1", lambda i: _cache(i, context_length="1"),
        "--context-length 1 is too short: use at least 2", alone=True, prepare=NO_CACHE_MODEL),
    Row("cache: --batch-size 0", lambda i: _cache(i, batch_size="0"), "--batch-size 0 must be at least 1",
        alone=True, prepare=NO_CACHE_MODEL),
    Row("cache: an unknown hook name", lambda i: _cache(i, hooks="blocks.0.resid_post"),
        "unknown hook name 'blocks.0.resid_post'", also=("cli.py hooks",), alone=True, prepare=NO_CACHE_MODEL),
    Row("cache: a hook named twice", lambda i: _cache(i, hooks="blocks.0.hook_resid_post,blocks.0.hook_resid_post"),
        "duplicate hook names", also=("list each hook once",), alone=True, prepare=NO_CACHE_MODEL),
    Row("cache: --out a folder", lambda i: _cache(i, out=str(i["empty"])) + ["--overwrite"], "error: --out",
        also=("is a folder",), alone=True, prepare=NO_CACHE_MODEL, unchanged=lambda i: [i["empty"]]),
    Row("cache: --out under a file", lambda i: _cache(i, out=str(i["blocker"] / "c.h5")) + ["--overwrite"],
        "error: --out", also=("which is a file",), alone=True, prepare=NO_CACHE_MODEL,
        unchanged=lambda i: [i["blocker"]]),
    Row("cache: --max-tokens below one context", lambda i: _cache(i, max_tokens="10"),
        "--max-tokens 10 is less than one context of 16"),
    Row("cache: a corpus that does not exist", lambda i: _cache(i, corpus=str(i.root / "missing.txt")),
        "does not exist: pass a .txt file"),
    Row("cache: a corpus of an unknown type (.h5)", lambda i: _cache(i, corpus=str(i.cache_a)), "has an unknown type"),
    Row("cache: --pool with --fragments", lambda i: _cache(i) + ["--pool", "mean", "--fragments"],
        "--pool and --fragments conflict"),
    Row("cache: --context-length beyond the model's positions (was an IndexError traceback)", lambda i: [
        "cache", "--model", str(i.model_a), "--corpus", str(i.corpus), "--hooks", HOOK, "--context-length", "1000",
        "--max-tokens", "2000", "--out", str(i.out / "c.h5")], "--context-length 1000 is more than the 256 positions"),
    Row("hooks: --model given a file that is not a .gguf", lambda i: ["hooks", "--model", str(i.model_a / "config.json")],
        "is a file but not a .gguf file"),
    Row("hooks: an empty model folder", lambda i: ["hooks", "--model", str(i["model_paths"]["empty"])],
        "' is empty: pass a folder written by save_pretrained", also=("model folder '",)),
    Row("hooks: a folder without a model", lambda i: ["hooks", "--model", str(i["model_paths"]["no_model"])],
        "holds no config.json and no .gguf file"),
    Row("hooks: a folder of two .gguf files", lambda i: ["hooks", "--model", str(i["model_paths"]["two_ggufs"])],
        "holds 2 .gguf files (a.gguf, b.gguf): pass the one to load, e.g. --model ", also=("a.gguf",)),
    Row("hooks: a file that is not a .gguf", lambda i: ["hooks", "--model", str(i["model_paths"]["not_gguf"])],
        "is a file but not a .gguf file"),
    *[_cuda(command) for command in ("cache", "patch-ioi", "ioi-layers", "demo", "train-sae")],
    # -- train-sae, baselines, evaluate, export (test_sae_cli, test_sae_train, test_activations_hardening) ----------
    Row("train-sae: --eval-fraction leaving nothing to train on", lambda i: _train(i, "--eval-fraction", "0.99"),
        "too few to hold out 99% and still train", unchanged=lambda i: [i.cache_a]),
    Row("train-sae: --hook the cache does not hold", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", "blocks.0.hook_mlp_out", "--out", str(i.out)],
        "hook 'blocks.0.hook_mlp_out' is not in"),
    Row("train-sae: --cache that is not an HDF5 file", lambda i: [
        "train-sae", "--cache", str(i.corpus), "--hook", HOOK, "--out", str(i.out)], "is not an HDF5 file",
        unchanged=lambda i: [i.corpus]),
    Row("train-sae: a truncated cache is called corrupt", lambda i: [
        "train-sae", "--cache", str(i["truncated"]), "--hook", HOOK, "--out", str(i.out)], "corrupt HDF5",
        unchanged=lambda i: [i["truncated"]]),
    Row("train-sae: --out under a file", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--out", str(i["blocker"] / "sub")],
        "which is a file: pass another path", unchanged=lambda i: [i["blocker"]]),
    *[Row(f"train-sae: --lr {flag}", lambda i, flag=flag: [
        "train-sae", "--cache", str(i.root / "missing.h5"), "--hook", HOOK, "--lr", flag, "--out", str(i.out)],
        "--lr is not a finite number", alone=True) for flag in ("nan", "inf")],
    Row("baselines: top-k controls without a sparsity", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca_topk", "--out", str(i.out)],
        "need a sparsity: pass --topk-from"),
    Row("baselines: --ica-samples 1", lambda i: ["baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds",
                                                  "ica", "--ica-samples", "1", "--out", str(i.out)], "--ica-samples 1"),
    Row("baselines: every --topk-from SAE denser than the layer", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca_topk", "--topk-from",
        str(i["dense_sae"]), "--out", str(i.out)], "every --topk-from SAE", unchanged=lambda i: [i["dense_sae"]]),
    Row("evaluate: a dictionary of another width", lambda i: ["evaluate", "--cache", str(i.cache_a), "--dict",
                                                              str(i["narrow"]), "--no-model"],
        "d_in=16", also=("width 32", "use a dictionary trained on this model and hook"), alone=True,
        unchanged=lambda i: [i["narrow"]]),
    Row("evaluate: --plot that is not a .png", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--plot", str(i.root / "f.txt")],
        "must name a .png file", unchanged=lambda i: [i.dict_a]),
    Row("export: an unknown --format (argparse)", lambda i: ["export", "--dict", str(i.dict_a), "--out", str(i.out),
                                                              "--format", "xx"], "invalid choice: 'xx'"),
    # -- explain, descriptors (test_pipeline_hardening, test_explain_descriptors) ----------------------------------
    Row("explain: --features 0", lambda i: _explain(i, "--features", "0"), "--features 0: pass at least 1"),
    Row("explain: --feature-ids beyond the dictionary", lambda i: _explain(i, "--feature-ids", "99"),
        "--feature-ids [99] out of range for pca (32 features)"),
    Row("explain: --best-of 0", lambda i: _explain(i, "--best-of", "0"), "--best-of 0"),
    Row("explain: the same --dict twice", lambda i: _explain(i, "--dict", str(i.dict_a), str(i.dict_a)),
        "the same --dict folder is given twice"),
    Row("explain: an unknown backend", lambda i: _explain(i, "--explainer", "nonsense"),
        "unknown LLM backend 'nonsense': use tokens (no LLM), local:"),
    Row("explain: local: without a model", lambda i: _explain(i, "--explainer", "local:", "--simulator", "local:"),
        "'local:' names no model: use local:default"),
    Row("explain: openai: without a model", lambda i: _explain(i, "--simulator", "openai:"),
        "'openai:' names no model"),
    Row("descriptors: a --generator that is not one", lambda i: ["descriptors", "--corpus", str(i["annotated"]),
                                                                  "--generator", "gpt4", "--out", str(i.out)],
        "is not a generator"),
    # -- patch-ioi, ioi-layers (test_causal_command, test_causal_layers) ---------------------------------------------
    Row("patch-ioi: --n-prompts 0", lambda i: _patch(i, str(i["plain"]), extra=("--n-prompts", "0")),
        "--n-prompts must be at least 1"),
    Row("patch-ioi: --candidates 0", lambda i: _patch(i, str(i["plain"]), extra=("--candidates", "0")),
        "--candidates must be at least 1"),
    Row("patch-ioi: dictionaries at different hooks", lambda i: _patch(i, str(i["small_a"]), str(i["small_hook2"])),
        "do not share one hook", also=("blocks.2.hook_resid_post",)),
    Row("patch-ioi: a tokenizer without single-token names", lambda i: _patch(
        i, str(i["plain"]), model=str(i["models"]["gpt_neox"]))[:-2], "single token"),
    Row("patch-ioi: a dictionary of another width", lambda i: _patch(i, str(i["narrow"]),
                                                                      model=str(i["models"]["llama"])), "width 32"),
    Row("patch-ioi: --out under a file", lambda i: _patch(i, str(i["plain"]), out=str(i["blocker"] / "ioi")),
        "error: --out", also=("which is a file",), alone=True, prepare=no_model_load(),
        unchanged=lambda i: [i["blocker"]]),
    Row("patch-ioi: --plot a folder", lambda i: _patch(i, str(i["plain"]), extra=("--plot", str(i["png_folder"]))),
        "error: --plot", also=("is a folder",), alone=True, prepare=no_model_load(),
        unchanged=lambda i: [i["png_folder"]]),
    Row("ioi-layers: --json in a folder that does not exist", lambda i: [
        "ioi-layers", "--model", str(i.model_a), "--names", NAMES, "--json", str(i.root / "nope" / "x.json")],
        "does not exist", alone=True),
    Row("ioi-layers: --json a folder", lambda i: ["ioi-layers", "--model", str(i.root / "no-model"), "--json",
                                                  str(i["json_folder"])],
        "error: --json", also=("is a folder",), alone=True, prepare=no_model_load(),
        unchanged=lambda i: [i["json_folder"]]),
    # -- report, demo (test_report_*, test_pipeline_demo, test_pipeline_hardening) ---------------------------------
    Row("report: --max-features -1", lambda i: ["report", "--run", str(i.run), "--max-features", "-1",
                                                 "--out", str(i.out)], "--max-features -1 is negative",
        alone=True, unchanged=lambda i: [i.run]),
    Row("report: a --run that does not exist", lambda i: ["report", "--run", str(i.root / "nope")],
        "is not a folder"),
    Row("report: a run folder with nothing to show", lambda i: ["report", "--run", str(i["nothing_run"])],
        "holds nothing to report", unchanged=lambda i: [i["nothing_run"]]),
    Row("report: --out under a file", lambda i: ["report", "--run", str(i.run), "--out",
                                                 str(i["blocker"] / "report")],
        "which is a file", alone=True, unchanged=lambda i: [i["blocker"], i.run]),
    Row("report: --descriptors a folder without descriptors.jsonl", lambda i: ["report", "--run", str(i.run),
                                                                                 "--descriptors", str(i["empty"])],
        "descriptors.jsonl", alone=True, unchanged=lambda i: [i.run]),
    Row("report: --features-cache that does not exist", lambda i: [
        "report", "--run", str(i.run), "--out", str(i.out), "--features-cache", str(i.root / "nope.h5")],
        "is not a file", alone=True, unchanged=lambda i: [i.run]),
    Row("demo: --out under a file", lambda i: ["demo", "--out", str(i["blocker"] / "run"), "--llm", "none"],
        "error: --out", also=("which is a file",), alone=True,
        prepare=no_model_load("activations.cache_writer", "write_cache"), unchanged=lambda i: [i["blocker"]]),
]


@pytest.mark.parametrize("row", params(ROWS))
def test_bad_input(row: Row, bad_inputs: Inputs, capsys, monkeypatch):
    check_row(row, bad_inputs, capsys, monkeypatch)
