"""Shared fixtures. Helpers that several modules use are in tests/support/ (imported by name); no test module
imports from another test module.

Tiny random models of each family (no download; tests/support/tiny_models.py), the real offline default model,
the explain pipeline's cache and dictionaries, the sae tests' tiny cache, the feature-page report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import ARCHS, make_tiny_model, make_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models (model + tokenizer folders) usable as `--model <dir>`; llama's tokenizer adds BOS."""
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for arch_name in ARCHS:
        tokenizer = make_tokenizer(add_bos=(arch_name == "llama"))
        model = make_tiny_model(arch_name, vocab_size=len(tokenizer))
        path = root / arch_name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch_name] = path
    return dirs


@pytest.fixture(scope="session")
def bad_inputs(tiny_model_dirs, tmp_path_factory):
    """The inputs of the table of bad inputs (tests/support/bad_inputs.py), built once per session."""
    from tests.support.bad_inputs import build_inputs

    return build_inputs(tmp_path_factory.mktemp("bad_inputs"), tiny_model_dirs)


@pytest.fixture(scope="session")
def default_model():
    """The real offline default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from activations.models import load_model

    return load_model("default")


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A small .jsonl corpus of real-looking documents, including HTML that must be escaped downstream."""
    import json

    docs = [
        "The history of Paris begins with a small settlement on the Seine. " * 6,
        "Berlin is the capital and largest city of Germany by both area and population. " * 6,
        "A <script>alert('x')</script> tag & an ampersand should never run in a report. " * 6,
        "Mathematics studies numbers such as 1, 2, 3 and 42, shapes, and patterns. " * 6,
        "The quick brown fox jumps over the lazy dog again and again. " * 6,
        "Sparse autoencoders learn features from the residual stream of transformers. " * 6,
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    return path


# -- the sae tests ------------------------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """One torch thread for a test (the sae modules use it for every test: `pytestmark = usefixtures`).

    Their tensors are tiny; on a shared 2-core machine a second thread only adds waiting.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cache(tiny_model_dirs, tmp_path_factory) -> Path:
    """A real cache written by the real writer from the tiny GPT-NeoX model (width 32)."""
    import json

    from activations.cache_writer import cache_activations
    from tests.support.sae_data import HOOK

    root = tmp_path_factory.mktemp("sae_cache")
    corpus = root / "corpus.jsonl"
    docs = [f"Document {i}: the quick brown fox {i} jumps over the lazy dog near Paris and Berlin. " * 4
            for i in range(12)]
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in docs) + "\n", encoding="utf-8")
    cache_activations(model=str(tiny_model_dirs["gpt_neox"]), corpus=str(corpus),
                      hooks=[HOOK, "blocks.0.mlp.hook_post"], context_length=16, max_tokens=16 * 64,
                      batch_size=16, dtype="float32", out=root / "tiny.h5", progress=False)
    return root / "tiny.h5"


# -- the explain tests ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def setup(tiny_model_dirs, tmp_path_factory) -> dict:
    """A tiny Llama's fragment cache and the dictionaries `single`, `pca`, `neuron` (tests/support/explain_run.py).

    Shared by every explain pipeline module: tests read the cache and dictionaries and write only their own folders
    (a new folder under `tmp`, or their own tmp_path).
    """
    from tests.support.explain_run import build_explain_inputs

    return build_explain_inputs(tmp_path_factory.mktemp("explain_run"), tiny_model_dirs["llama"])


# -- the report tests -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """A synthetic run with feature pages (tests/support/feature_pages.py); built once per module that uses it."""
    from tests.support.feature_pages import build_feature_report

    return build_feature_report(tmp_path_factory.mktemp("run"))
