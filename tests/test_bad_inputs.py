"""One table of bad inputs (issue 28), each run through the real command line.

A row is: the command, the exit code it must end with, a fragment its one
`error:` line must contain, and the files that must be byte-for-byte the same
afterwards (the outputs it names must not appear either). The inputs are two
tiny GPT-2 models of the same width but other weights (model A and model B),
a cache of each, and dictionaries fitted on A's cache: the pairing rows are
the case where a dictionary of another model of the same width used to give
full, plausible numbers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import pytest

import cli

HOOK = "blocks.1.hook_resid_post"
NAMES = "John,Mary,Mar,Jo,Ber,Fr,Ger"
DOCS = [
    "When Mary and John went to the store, John gave a drink to Mary. " * 4,
    "Paris is the capital of France. Berlin is the capital of Germany. " * 4,
    "The quick brown fox jumps over the lazy dog, again and again. " * 4,
    "Sparse autoencoders find interpretable features in language models. " * 4,
]


@dataclass
class Inputs:
    root: Path
    model_a: Path
    model_b: Path
    corpus: Path
    cache_a: Path
    cache_b: Path
    dict_a: Path  # a pca basis fitted on A's cache (it records A)
    sae_a: Path  # a pca basis with a recorded mean L0, for --topk-from
    run: Path  # a run folder holding dict_a, for `report`
    extra: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.root / "outputs" / "out"


@pytest.fixture(scope="module")
def inputs(tiny_model_dirs, tmp_path_factory) -> Inputs:
    from activations.cache_writer import cache_activations
    from sae.fit_baselines import fit_baselines_from_cache
    from sae.io import update_metrics
    from tests.conftest import make_tiny_model
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    model_a = tiny_model_dirs["gpt2"]
    tokenizer = AutoTokenizer.from_pretrained(model_a)
    model_b = root / "model_b"  # same config and width, other weights (another seed)
    make_tiny_model("gpt2", vocab_size=len(tokenizer), seed=1).save_pretrained(model_b)
    tokenizer.save_pretrained(model_b)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS * 4), encoding="utf-8")
    caches = {}
    for name, model in (("a", model_a), ("b", model_b)):
        caches[name] = cache_activations(model=str(model), corpus=str(corpus), hooks=[HOOK], context_length=32,
                                         max_tokens=32 * 16, batch_size=16, dtype="float32",
                                         out=root / f"cache_{name}.h5", fragments=True, progress=False).path
    dict_a, = fit_baselines_from_cache(caches["a"], HOOK, ["pca"], root / "dicts_a", tokens=256, progress=False)
    sae_a = root / "sae_a"
    shutil.copytree(dict_a, sae_a)
    update_metrics(sae_a, {"l0": 4.0})
    shutil.copytree(dict_a, root / "dict_copy")  # for commands that write into a dictionary's config.json
    small_a = _small_dictionary(dict_a, root / "small_a")
    run = root / "run"
    shutil.copytree(dict_a, run / "pca_a")
    pooled_b, descriptors = _pooled(root, model_b, corpus)
    (root / "outputs").mkdir()
    damaged = {}
    for what, value, context in (("nan", float("nan"), 5), ("inf", float("inf"), 2)):
        damaged[what] = root / f"cache_{what}.h5"
        shutil.copy(caches["a"], damaged[what])
        with h5py.File(damaged[what], "r+") as f:
            f["acts"][HOOK][context, 3, 7] = value
    latin1 = root / "latin1.txt"
    latin1.write_bytes("Café au lait and crème brûlée. ".encode("latin-1") * 20)
    return Inputs(root, Path(model_a), model_b, corpus, Path(caches["a"]), Path(caches["b"]), Path(dict_a),
                  sae_a, run, {"pooled_b": pooled_b, "descriptors": descriptors,
                                                                         "latin1": latin1, **damaged,
                                                                         "dict_copy": root / "dict_copy",
                                                                         "small_a": small_a})


def _small_dictionary(like: Path, folder: Path) -> Path:
    """A 4-feature tied SAE recording the same model as `like` (patch-ioi's greedy over it takes a second)."""
    import torch

    import sae
    from activations.provenance import record_of
    from sae.dictionaries import TiedSAE

    made_from = sae.load(like)
    m = torch.randn(4, made_from.d_in, generator=torch.Generator().manual_seed(0))
    config = {"d_in": made_from.d_in, "n_features": 4, "hook": HOOK, **record_of(made_from.config)}
    return TiedSAE({"M": m, "b": torch.zeros(4)}, config).save(folder)


def _pooled(root: Path, model: Path, corpus: Path) -> tuple[Path, Path]:
    """A pooled cache of `model` and a hand-written descriptors folder of its documents, for `describe`."""
    from activations.pooled_reader import PooledCache

    pooled = root / "pooled_b.h5"
    assert cli.main(["cache", "--model", str(model), "--corpus", str(corpus), "--hooks", HOOK, "--pool", "mean",
                     "--context-length", "32", "--dtype", "float32", "--out", str(pooled)]) == 0
    with PooledCache(pooled) as cache:
        ids = cache.doc_ids()
    folder = root / "descriptors"
    folder.mkdir()
    (folder / "documents.jsonl").write_text("".join(
        json.dumps({"id": doc_id, "descriptors": ["alpha" if n % 2 else "beta"], "fields": {}}) + "\n"
        for n, doc_id in enumerate(ids)), encoding="utf-8")
    (folder / "vocabulary.json").write_text(json.dumps([{"name": "alpha", "documents": 8, "members": ["alpha"]},
                                                        {"name": "beta", "documents": 8, "members": ["beta"]}]))
    return pooled, folder


@dataclass(frozen=True)
class Row:
    """One bad input: `args(inputs)` -> argv; the error line must contain `fragment` (for code 0, a count that does
    not fit: one printed line must); `unchanged(inputs)` lists files (or folders: every file under them) that must
    be byte-for-byte the same afterwards."""

    id: str
    args: Callable[[Inputs], list[str]]
    fragment: str
    code: int = 2
    unchanged: Callable[[Inputs], list[Path]] = lambda i: []
    absent: tuple[str, ...] = ()  # what the error line must not say (e.g. a flag the command line did not pass)


def _pairing(command: str) -> Callable[[Inputs], list[str]]:
    """`command` pairing A's dictionary with B (its cache, or --model B)."""
    def args(i: Inputs) -> list[str]:
        return {
            "patch-ioi": ["patch-ioi", "--model", str(i.model_b), "--dict", str(i.dict_a), "--n-prompts", "3",
                          "--names", NAMES, "--out", str(i.out)],
            "explain": ["explain", "--cache", str(i.cache_b), "--dict", str(i.dict_a), "--features", "2",
                        "--out", str(i.out)],
            "evaluate": ["evaluate", "--cache", str(i.cache_b), "--dict", str(i.dict_a), "--no-model",
                         "--eval-fraction", "0.25", "--tokens", "64"],
            "evaluate-model": ["evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--model",
                               str(i.model_b), "--eval-fraction", "0.25", "--tokens", "64", "--ce-contexts", "2"],
            "report": ["report", "--run", str(i.run), "--features-cache", str(i.cache_b), "--out", str(i.out)],
            "describe": ["describe", "--cache", str(i.extra["pooled_b"]), "--dict", str(i.dict_a), "--descriptors",
                         str(i.extra["descriptors"]), "--out", str(i.out)],
            "baselines": ["baselines", "--cache", str(i.cache_b), "--hook", HOOK, "--kinds", "pca_topk",
                          "--topk-from", str(i.sae_a), "--tokens", "256", "--out", str(i.out)],
        }[command]
    return args


PAIRING_FRAGMENT = "was trained on model"

ROWS = [
    # -- item 1: what goes with what ----------------------------------------------------------------------------------
    Row("patch-ioi: a dictionary of another model of the same width", _pairing("patch-ioi"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a]),
    Row("explain: a dictionary of another model's cache", _pairing("explain"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_b]),
    Row("evaluate: a dictionary of another model's cache", _pairing("evaluate"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_b]),
    Row("evaluate: --model of another model", _pairing("evaluate-model"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_a]),
    Row("report: feature pages from another model's cache", _pairing("report"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.run, i.cache_b]),
    Row("describe: a dictionary of another model's pooled cache", _pairing("describe"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.extra["pooled_b"], i.extra["descriptors"]]),
    Row("baselines: --topk-from an SAE of another model", _pairing("baselines"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.sae_a, i.cache_b]),
]


def _cache(i: Inputs, corpus: Path, *extra: str) -> list[str]:
    return ["cache", "--model", str(i.model_a), "--corpus", str(corpus), "--hooks", HOOK, "--context-length", "16",
            "--max-tokens", "64", "--out", str(i.out / "c.h5"), *extra]


ROWS += [
    # -- item 2: text is read as it is --------------------------------------------------------------------------------
    Row("cache: a Latin-1 corpus file", lambda i: _cache(i, i.extra["latin1"]),
        "is not valid utf-8: byte 0xe9 at offset 3 (line 1) cannot be decoded; pass --encoding",
        unchanged=lambda i: [i.extra["latin1"]]),
    Row("cache: an --encoding Python does not know", lambda i: _cache(i, i.extra["latin1"], "--encoding", "latin-9x"),
        "--encoding 'latin-9x' is not a text encoding"),
    Row("cache: --encoding with the bundled corpus", lambda i: _cache(i, Path("default"), "--encoding", "latin-1"),
        "--encoding applies to corpus files"),
    Row("descriptors: a Latin-1 corpus file", lambda i: ["descriptors", "--corpus", str(i.extra["latin1"]),
                                                          "--generator", "field:kind", "--out", str(i.out)],
        "is not valid utf-8: byte 0xe9", unchanged=lambda i: [i.extra["latin1"]]),
]


ROWS += [
    # -- item 4: bad numbers in data are found in data ----------------------------------------------------------------
    Row("train-sae: a cache holding NaN", lambda i: ["train-sae", "--cache", str(i.extra["nan"]), "--hook", HOOK,
                                                      "--tokens", "256", "--batch-size", "32", "--out", str(i.out)],
        f"holds NaN activations at {HOOK!r} (first in context 5, position 3)", unchanged=lambda i: [i.extra["nan"]]),
    Row("train-sae: a cache holding inf", lambda i: ["train-sae", "--cache", str(i.extra["inf"]), "--hook", HOOK,
                                                      "--tokens", "256", "--batch-size", "32", "--out", str(i.out)],
        f"holds inf activations at {HOOK!r} (first in context 2, position 3)", unchanged=lambda i: [i.extra["inf"]]),
    Row("baselines: a cache holding NaN", lambda i: ["baselines", "--cache", str(i.extra["nan"]), "--hook", HOOK,
                                                      "--kinds", "pca", "--tokens", "256", "--out", str(i.out)],
        "holds NaN activations", unchanged=lambda i: [i.extra["nan"]]),
    Row("evaluate: a cache holding NaN", lambda i: ["evaluate", "--cache", str(i.extra["nan"]), "--dict",
                                                     str(i.dict_a), "--no-model", "--eval-fraction", "0.5"],
        "holds NaN activations", unchanged=lambda i: [i.extra["nan"], i.dict_a]),
]


ROWS += [
    # -- item 3: budgets that do not fit the data are said --------------------------------------------------------------
    Row("train-sae: --tokens beyond the cache's training tokens", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--tokens", "1302", "--batch-size", "217",
        "--out", str(i.out)], "note: --tokens 1,302 over a 434-token cache (its training contexts) = 3.0 passes", code=0,
        unchanged=lambda i: [i.cache_a]),
    Row("baselines: --tokens beyond the cache's training tokens", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca", "--tokens", "5000",
        "--out", str(i.out)], "note: using all 434 training tokens of the cache, fewer than --tokens 5,000", code=0,
        unchanged=lambda i: [i.cache_a]),
    Row("evaluate: --tokens and --ce-contexts beyond the held-out part", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i.extra["dict_copy"]), "--tokens", "5000",
        "--ce-contexts", "50"], "note: using all 2 measured contexts of the cache, fewer than --ce-contexts 50",
        code=0, unchanged=lambda i: [i.cache_a]),
    Row("patch-ioi: --candidates not fewer than the features", lambda i: [
        "patch-ioi", "--model", str(i.model_a), "--dict", str(i.extra["small_a"]), "--n-prompts", "3", "--names",
        NAMES, "--candidates", "40", "--out", str(i.out)],
        "note: --candidates 40 is not fewer than the 4 features of small_a", code=0,
        unchanged=lambda i: [i.extra["small_a"]]),
]


def _train(i: Inputs, *extra: str) -> list[str]:
    return ["train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--tokens", "256", "--batch-size", "32",
            "--out", str(i.out), *extra]


ROWS += [
    # -- item 5: every refusal names the right thing ------------------------------------------------------------------
    Row("cache: --model with two separators is a missing folder, not a hub id", lambda i: [
        "cache", "--model", "work/models/x", "--corpus", str(i.corpus), "--hooks", HOOK, "--out", str(i.out / "c.h5")],
        "model folder 'work/models/x' does not exist (no 'work' here)"),
    Row("patch-ioi: --model under a local folder is a missing folder", lambda i: [
        "patch-ioi", "--model", "sae/no_such_model", "--dict", str(i.dict_a), "--out", str(i.out)],
        "model folder 'sae/no_such_model' does not exist ('sae' has no 'no_such_model')"),
    Row("patch-ioi: --dict given a file", lambda i: [
        "patch-ioi", "--model", str(i.model_a), "--dict", str(i.dict_a / "config.json"), "--out", str(i.out)],
        "is a file, not a dictionary folder", unchanged=lambda i: [i.dict_a]),
    Row("explain: --dict given a file", lambda i: [
        "explain", "--cache", str(i.cache_a), "--dict", str(i.corpus), "--out", str(i.out)],
        "is a file, not a dictionary folder"),
    Row("describe: --descriptors given a file", lambda i: [
        "describe", "--cache", str(i.extra["pooled_b"]), "--dict", str(i.dict_a), "--descriptors", str(i.corpus),
        "--out", str(i.out)], "is a file, not a descriptors folder"),
    Row("train-sae: --k above the dictionary width", lambda i: _train(i, "--kind", "topk", "--k", "100"),
        "--k 100 is more than the 64 features"),
    Row("train-sae: a negative --ratio in exponent notation", lambda i: _train(i, "--ratio", "-1e-3"),
        "--ratio [-0.001] must be positive"),
    Row("train-sae: a negative --l1 in exponent notation", lambda i: _train(i, "--l1", "-1e-3"),
        "--l1 [-0.001] must be non-negative"),
    Row("cache: --context-length beyond the model's positions (was an IndexError traceback)", lambda i: [
        "cache", "--model", str(i.model_a), "--corpus", str(i.corpus), "--hooks", HOOK, "--context-length", "1000",
        "--max-tokens", "2000", "--out", str(i.out / "c.h5")], "--context-length 1000 is more than the 256 positions"),
    Row("train-sae: --cache given a folder", lambda i: [
        "train-sae", "--cache", str(i.dict_a), "--hook", HOOK, "--out", str(i.out)],
        "is a folder, not a cache file", unchanged=lambda i: [i.dict_a]),
    Row("evaluate: --tokens 0 names --tokens alone", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--tokens", "0"],
        "--tokens 0 must be positive", absent=("--ce-contexts",), unchanged=lambda i: [i.dict_a]),
    Row("explain: an LLM --explainer with the default simulator names only flags given", lambda i: [
        "explain", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--explainer", "local:default",
        "--out", str(i.out)], "--simulator is tokens (the default)", absent=("--scorers",)),
]


def _explain(i: Inputs, *extra: str) -> list[str]:
    return ["explain", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--out", str(i.out), *extra]


def _blocked(i: Inputs) -> Path:
    """A file that is in the way of an output path (the output would go under it)."""
    blocker = i.root / "a_file"
    if not blocker.exists():
        blocker.write_text("precious")
    return blocker


ROWS += [
    # -- earlier refusals (issues 13, 14 and before), kept here so the table is the one place to look ------------------
    Row("train-sae: --eval-fraction leaving nothing to train on", lambda i: _train(i, "--eval-fraction", "0.99"),
        "too few to hold out 99% and still train", unchanged=lambda i: [i.cache_a]),
    Row("train-sae: --hook the cache does not hold", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", "blocks.0.hook_mlp_out", "--out", str(i.out)],
        "hook 'blocks.0.hook_mlp_out' is not in"),
    Row("train-sae: --cache that is not an HDF5 file", lambda i: [
        "train-sae", "--cache", str(i.corpus), "--hook", HOOK, "--out", str(i.out)], "is not an HDF5 file",
        unchanged=lambda i: [i.corpus]),
    Row("train-sae: --out under a file", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--out", str(_blocked(i) / "sub")],
        "which is a file: pass another path", unchanged=lambda i: [_blocked(i)]),
    Row("explain: --features 0", lambda i: _explain(i, "--features", "0"), "--features 0: pass at least 1"),
    Row("explain: --feature-ids beyond the dictionary", lambda i: _explain(i, "--feature-ids", "99"),
        "--feature-ids [99] out of range for pca (32 features)"),
    Row("explain: --best-of 0", lambda i: _explain(i, "--best-of", "0"), "--best-of 0"),
    Row("explain: the same --dict twice", lambda i: _explain(i, "--dict", str(i.dict_a), str(i.dict_a)),
        "the same --dict folder is given twice"),
    Row("baselines: top-k controls without a sparsity", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca_topk", "--out", str(i.out)],
        "need a sparsity: pass --topk-from"),
    Row("baselines: --k above the width", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca_topk", "--k", "100",
        "--out", str(i.out)], "k=100 is larger than the width 32"),
    Row("evaluate: --plot that is not a .png", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--plot", str(i.root / "f.txt")],
        "must name a .png file", unchanged=lambda i: [i.dict_a]),
    Row("patch-ioi: --n-prompts 0", lambda i: _pairing("patch-ioi")(i)[:-2] + ["--n-prompts", "0", "--out",
                                                                              str(i.out)], "--n-prompts must be at least 1"),
    Row("patch-ioi: --candidates 0", lambda i: _pairing("patch-ioi")(i) + ["--candidates", "0"],
        "--candidates must be at least 1"),
    Row("report: --max-features -1", lambda i: ["report", "--run", str(i.run), "--max-features", "-1",
                                                 "--out", str(i.out)], "--max-features -1 is negative",
        unchanged=lambda i: [i.run]),
    Row("cache: --max-tokens below one context", lambda i: _cache(i, i.corpus, "--max-tokens", "10"),
        "--max-tokens 10 is less than one context of 16"),
    Row("cache: a corpus that does not exist", lambda i: _cache(i, i.root / "missing.txt"),
        "does not exist: pass a .txt file"),
    Row("cache: a corpus of an unknown type", lambda i: _cache(i, i.cache_a), "has an unknown type"),
    Row("cache: --pool with --fragments", lambda i: _cache(i, i.corpus, "--pool", "mean", "--fragments"),
        "--pool and --fragments conflict"),
    Row("hooks: --model given a file that is not a .gguf", lambda i: ["hooks", "--model", str(i.model_a / "config.json")],
        "is a file but not a .gguf file"),
    Row("export: an unknown --format (argparse)", lambda i: ["export", "--dict", str(i.dict_a), "--out", str(i.out),
                                                              "--format", "xx"], "invalid choice: 'xx'"),
]


def _digest(paths: list[Path]) -> dict[str, str]:
    found = {}
    for path in paths:
        for f in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            found[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def run_cli(args: list[str]) -> int:
    """cli.main as the shell runs it: argparse's own refusals exit through SystemExit."""
    try:
        return cli.main(args)
    except SystemExit as stop:
        return int(stop.code or 0)


def error_line(err: str) -> str:
    lines = [line[line.index("error: "):] for line in err.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, inputs: Inputs, capsys):
    before = _digest(row.unchanged(inputs))
    shutil.rmtree(inputs.out, ignore_errors=True)
    code = run_cli(row.args(inputs))
    out, err = capsys.readouterr()
    assert code == row.code, err
    assert _digest(row.unchanged(inputs)) == before
    if row.code == 0:  # said, not hidden: one line of the output names the count and what exists
        assert [line for line in out.splitlines() if row.fragment in line], out
        return
    line = error_line(err)
    assert row.fragment in line and not [a for a in row.absent if a in line], line
    assert not inputs.out.exists(), "a refused command wrote its output"


# -- the flag that means it -----------------------------------------------------------------------------------------

def test_patch_ioi_with_the_flag_runs_and_records_the_mismatch(inputs, capsys):
    out = inputs.root / "outputs" / "allowed"
    args = _pairing("patch-ioi")(inputs)
    args[args.index("--out") + 1] = str(out)
    args[args.index("--dict") + 1] = str(inputs.extra["small_a"])
    assert run_cli(args + ["--allow-model-mismatch"]) == 0
    assert "used anyway because of --allow-model-mismatch" in capsys.readouterr().out
    for name in ("ioi.json", "ioi_config.json"):
        pairing = json.loads((out / name).read_text())["pairing"]["small_a"]
        assert pairing["status"].startswith("mismatch allowed (weights differ")
        assert pairing["made_from"]["model_id"] == str(inputs.model_a)
        assert pairing["used_on"]["model_id"] == str(inputs.model_b)


def test_evaluate_with_the_flag_records_the_mismatch_and_the_same_model_passes(inputs, tmp_path, capsys):
    folder = tmp_path / "pca"
    shutil.copytree(inputs.dict_a, folder)
    base = ["evaluate", "--dict", str(folder), "--no-model", "--eval-fraction", "0.25", "--tokens", "64"]
    assert run_cli(base + ["--cache", str(inputs.cache_a)]) == 0
    assert json.loads((folder / "config.json").read_text())["metrics"]["pairing"][0]["status"] == "same model"
    assert run_cli(base + ["--cache", str(inputs.cache_b), "--allow-model-mismatch"]) == 0
    pairing = json.loads((folder / "config.json").read_text())["metrics"]["pairing"]
    assert pairing[0]["status"].startswith("mismatch allowed")


def test_the_same_weights_in_another_folder_are_the_same_model(inputs, tmp_path):
    """The fingerprint, not the path, decides: a copied model folder still pairs with its dictionaries."""
    from activations.models import load_model
    from activations.provenance import check_pairing, loaded_record
    import sae

    copy = tmp_path / "copy_of_a"
    shutil.copytree(inputs.model_a, copy)
    entry = check_pairing(sae.load(inputs.dict_a), loaded_record(load_model(str(copy))), "--model copy")
    assert entry["status"] == "same model"


def test_files_from_before_the_fingerprint_are_compared_by_name():
    from activations.provenance import mismatch, record_of

    assert mismatch({"model_id": "EleutherAI/pythia-70m-deduped"}, {"model_id": "pythia-70m-deduped"}) is None
    assert mismatch({"model_id": "gpt2"}, {"model_id": "EleutherAI/pythia-70m-deduped"}) == "names differ"
    assert mismatch({"model_id": "org/m", "model_revision": "a" * 40},
                    {"model_id": "org/m", "model_revision": "b" * 40}).startswith("revisions differ")
    assert mismatch({}, {"model_id": "gpt2"}) is None  # a side that does not say is not refused
    assert mismatch(record_of({"model_id": "synthetic"}), {"model_id": "gpt2"}) is None  # in-memory training data


def test_train_sae_records_its_passes_in_config_json(inputs, tmp_path):
    out = tmp_path / "dicts"
    assert run_cli(["train-sae", "--cache", str(inputs.cache_a), "--hook", HOOK, "--tokens", "868",
                    "--batch-size", "62", "--out", str(out)]) == 0
    config = json.loads(next(out.glob("*/config.json")).read_text())
    assert config["passes"] == 2.0 and config["data"]["tokens"] == 434


def test_hooks_are_accepted_space_separated_as_well_as_with_commas(inputs, tmp_path):
    from activations.reader import ActivationCache

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", HOOK]
    out = tmp_path / "c.h5"
    assert run_cli(["cache", "--model", str(inputs.model_a), "--corpus", str(inputs.corpus), "--hooks", hooks[0],
                    f"{hooks[1]},{hooks[2]}", "--context-length", "16", "--max-tokens", "32", "--out", str(out)]) == 0
    with ActivationCache(out) as cache:
        assert cache.hooks == hooks
