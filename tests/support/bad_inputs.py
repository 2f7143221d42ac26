"""The inputs and the row runner of the one table of bad inputs (issue 28; tests/test_bad_inputs_*.py).

A row is: the command, the exit code it must end with, a fragment its one
`error:` line must contain, and the files that must be byte-for-byte the same
afterwards (the output it names must not appear either). The inputs are two
tiny GPT-2 models of the same width but other weights (model A and model B),
a cache of each, and dictionaries fitted on A's cache: the pairing rows are
the case where a dictionary of another model of the same width used to give
full, plausible numbers. Built once per test session (`bad_inputs` in
tests/conftest.py); no row may change them, except where it names a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

import cli
from tests.support.cli_output import error_line

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.root / "outputs" / "out"

    def __getitem__(self, name: str) -> Any:
        return self.extra[name]


def build_inputs(root: Path, tiny_model_dirs: dict[str, Path]) -> Inputs:
    """Every input of the table, under `root` (see the module docstring)."""
    import h5py
    from transformers import AutoTokenizer

    from activations.cache_writer import cache_activations
    from sae.fit_baselines import fit_baselines_from_cache
    from sae.io import update_metrics
    from tests.support.tiny_models import make_tiny_model

    model_a = Path(tiny_model_dirs["gpt2"])
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
    dense = root / "dense_sae"  # denser than the layer is wide: no top-k control can be made from it
    shutil.copytree(dict_a, dense)
    update_metrics(dense, {"l0": 37.0})
    shutil.copytree(dict_a, root / "dict_copy")  # for commands that write into a dictionary's config.json
    run = root / "run"
    shutil.copytree(dict_a, run / "pca_a")
    pooled_b, descriptors = _pooled(root, model_b, corpus)
    (root / "outputs").mkdir()
    extra: dict[str, Any] = {"pooled_b": pooled_b, "descriptors": descriptors, "dict_copy": root / "dict_copy",
                             "dense_sae": dense, "models": dict(tiny_model_dirs)}
    extra["small_a"] = _tied(dict_a, root / "small_a", HOOK)
    extra["small_hook2"] = _tied(dict_a, root / "small_hook2", "blocks.2.hook_resid_post")
    extra["narrow"] = _tied(None, root / "narrow", HOOK, d_in=16)  # records no model: only its width is wrong
    extra["plain"] = _tied(None, root / "plain", HOOK, d_in=32)  # records no model: fits any model of width 32
    for what, value, context in (("nan", float("nan"), 5), ("inf", float("inf"), 2)):
        extra[what] = root / f"cache_{what}.h5"
        shutil.copy(caches["a"], extra[what])
        with h5py.File(extra[what], "r+") as f:
            f["acts"][HOOK][context, 3, 7] = value
    extra["pooled_inf"] = root / "pooled_inf.h5"
    shutil.copy(pooled_b, extra["pooled_inf"])
    with h5py.File(extra["pooled_inf"], "r+") as f:
        f["pooled"][HOOK][3, 1] = float("inf")
    extra["truncated"] = root / "truncated.h5"
    data = Path(caches["a"]).read_bytes()
    extra["truncated"].write_bytes(data[: len(data) // 2])
    extra["latin1"] = root / "latin1.txt"
    extra["latin1"].write_bytes("Café au lait and crème brûlée. ".encode("latin-1") * 20)
    extra["annotated"] = root / "annotated.jsonl"
    extra["annotated"].write_text("".join(json.dumps({"text": d, "group": n % 2, "kind": "x"}) + "\n"
                                          for n, d in enumerate(DOCS * 2)), encoding="utf-8")
    extra["blocker"] = root / "a_file"  # a file in the way of an output path (the output would go under it)
    extra["blocker"].write_text("precious")
    extra["nothing_run"] = root / "nothing_run"  # a run folder with nothing to report
    extra["nothing_run"].mkdir()
    (extra["nothing_run"] / "notes.txt").write_text("nothing here")
    extra["empty"] = root / "empty"
    extra["empty"].mkdir()
    extra["json_folder"] = root / "table.json"  # folders where a file is expected
    extra["json_folder"].mkdir()
    extra["png_folder"] = root / "plots.png"
    extra["png_folder"].mkdir()
    extra["tsv"] = root / "corpus.tsv"  # .csv is a corpus kind since issue 14; .tsv is not
    extra["tsv"].write_text("text\nhello world\n")
    extra["model_paths"] = _not_models(root / "not_models")
    return Inputs(root, model_a, model_b, corpus, Path(caches["a"]), Path(caches["b"]), Path(dict_a), sae_a, run,
                  extra)


def _tied(like: Path | None, folder: Path, hook: str, d_in: int | None = None) -> Path:
    """A 4-feature tied SAE recording the model of `like` (patch-ioi's greedy over it takes a second)."""
    import torch

    import sae
    from activations.provenance import record_of
    from sae.dictionaries import TiedSAE

    record = {}
    if like is not None:
        made_from = sae.load(like)
        d_in, record = made_from.d_in, record_of(made_from.config)
    m = torch.randn(4, d_in, generator=torch.Generator().manual_seed(0))
    return TiedSAE({"M": m, "b": torch.zeros(4)}, {"d_in": d_in, "n_features": 4, "hook": hook, **record}).save(folder)


def _not_models(root: Path) -> dict[str, Path]:
    """Paths given as --model that hold no model: an empty folder, one of notes, one of two GGUFs, a plain file."""
    paths = {name: root / name for name in ("empty", "no_model", "two_ggufs")}
    for path in paths.values():
        path.mkdir(parents=True)
    (paths["no_model"] / "notes.txt").write_text("x")
    (paths["two_ggufs"] / "a.gguf").write_bytes(b"GGUF")
    (paths["two_ggufs"] / "b.gguf").write_bytes(b"GGUF")
    paths["not_gguf"] = paths["no_model"] / "weights.bin"
    paths["not_gguf"].write_bytes(b"x")
    return paths


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
        json.dumps({"id": doc_id, "descriptors": ["alpha" if n % 2 else "beta"],
                    "fields": {"topic": "c" if n < 2 else "ab"[n % 2], "kind": "x"}}) + "\n"
        for n, doc_id in enumerate(ids)), encoding="utf-8")
    (folder / "vocabulary.json").write_text(json.dumps([{"name": "alpha", "documents": 8, "members": ["alpha"]},
                                                        {"name": "beta", "documents": 8, "members": ["beta"]}]))
    return pooled, folder


def no_model_load(module: str = "activations.models", name: str = "load_model") -> Callable:
    """A `prepare` that fails the row if `module.name` is called: the refusal must come before any model loads."""
    def prepare(inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"{module}.{name} must not be called for this argument error")

        monkeypatch.setattr(f"{module}.{name}", refuse)
    return prepare


@dataclass(frozen=True)
class Row:
    """One bad input: `args(inputs)` -> argv; the error line must contain `fragment` and every one of `also` (for
    code 0, a count that does not fit: one printed line must contain `fragment`); `unchanged(inputs)` lists files
    (or folders: every file under them) that must be byte-for-byte the same afterwards; `absent`: what the error
    line must not say (e.g. a flag the command line did not pass); `alone`: stderr holds that line and nothing
    else (no progress bar: it came before any model loaded); `started`: the command may leave its run folder
    (an explain run is started, resumably, before its cache is read); `prepare(inputs, monkeypatch)` runs first."""

    id: str
    args: Callable[[Inputs], list[str]]
    fragment: str
    code: int = 2
    unchanged: Callable[[Inputs], list[Path]] = lambda i: []
    absent: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    alone: bool = False
    started: bool = False
    prepare: Callable[[Inputs, pytest.MonkeyPatch], None] | None = None
    marks: tuple = ()


def params(rows: list[Row]) -> list:
    """`rows` as pytest parameters, named by their ids, with their marks."""
    return [pytest.param(r, id=r.id, marks=r.marks) for r in rows]


def digest(paths: list[Path]) -> dict[str, str]:
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


def check_row(row: Row, inputs: Inputs, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `row` through the real command line and check everything it promises."""
    before = digest(row.unchanged(inputs))
    shutil.rmtree(inputs.out, ignore_errors=True)
    if row.prepare is not None:
        row.prepare(inputs, monkeypatch)
    code = run_cli(row.args(inputs))
    out, err = capsys.readouterr()
    assert code == row.code, err
    assert digest(row.unchanged(inputs)) == before
    if row.code == 0:  # said, not hidden: one line of the output names the count and what exists
        assert [line for line in out.splitlines() if row.fragment in line], out
        return
    line = error_line(err)
    assert all(f in line for f in (row.fragment, *row.also)), line
    assert not [a for a in row.absent if a in line], line
    if row.alone:
        assert err.strip() == line, err
    if not row.started:
        assert not inputs.out.exists(), "a refused command wrote its output"
