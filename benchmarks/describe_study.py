"""Descriptor discovery on real offline data, every basis (issue 14, item 9): run by hand, never by CI.

Corpora: a seeded sample of the Wikipedia leads (descriptors: the human
`description`, clustered; gold: `topic`) and of the labelled tweets
(descriptors and gold: `sentiment`), both written as .jsonl with ids.
Models: all-MiniLM-L6-v2 ([CLS] and mean pooling, last layer) and the
default causal model SmolLM2-135M (mean pooling, a middle layer). Bases per
pooled cache: neuron, PCA, ICA, random (fitted on the pooled vectors) and a
probe per gold label; `describe` then gives consistency per basis and
precision@K / recall@K on the probes. Everything goes through the CLI
functions, so the folders can be inspected and every step resumes (a pooled
cache already at its path is used as it is, e.g. one written by
`benchmarks/pool_once.py`). `describe` runs once per rule: the paper's
(`*_described`) and ours (lift >= 2, >= 5 active exemplars, per-document
frequency: `*_described_lift`), each over `--splits` stratified splits.

    python benchmarks/describe_study.py --out runs/describe_study [--wiki 2000] [--tweets 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activations.cache_writer import cache_activations  # noqa: E402
from activations.corpus import resolve_corpus  # noqa: E402
from activations.pooled_reader import PooledCache  # noqa: E402
from explain.descriptors.build import descriptors_command  # noqa: E402
from explain.descriptors.describe import describe_command  # noqa: E402
from explain.descriptors.probe import probe_command  # noqa: E402
from explain.descriptors.settings import DescribeSettings, DescriptorsSettings, ProbeSettings  # noqa: E402

# (model, pool, hook): MiniLM's last block; SmolLM2 (30 blocks) in the middle, where the run can stop early
SUBJECTS = [("minilm", "cls", "blocks.5.hook_resid_post"), ("minilm", "mean", "blocks.5.hook_resid_post"),
            ("default", "mean", "blocks.14.hook_resid_post")]
CORPORA = {"wiki": ("description", "topic"), "tweets": ("sentiment", "sentiment")}


def sample_corpus(name: str, n: int, out: Path, seed: int = 0) -> Path:
    """A seeded sample of `n` annotated documents as .jsonl (id, text, annotation fields), written once."""
    path = out / f"{name}_{n}.jsonl"
    if path.exists():
        return path
    docs = list(resolve_corpus("default" if name == "wiki" else "tweets").records())
    gold = CORPORA[name][1]
    docs = [d for d in docs if d.fields.get(gold) and (name != "wiki" or d.fields.get("description"))]
    pick = sorted(np.random.default_rng(seed).choice(len(docs), size=min(n, len(docs)), replace=False).tolist())
    path.write_text("\n".join(json.dumps({"id": docs[i].id, "text": docs[i].text, **docs[i].fields},
                                         ensure_ascii=False) for i in pick) + "\n", encoding="utf-8")
    return path


def subset(corpus: Path, n: int, out: Path, seed: int = 1) -> Path:
    """A seeded random `n` of the sample's lines, in their original order (same ids: joins with its descriptors)."""
    path = out / f"{corpus.stem}_random{n}.jsonl"
    if not path.exists():
        lines = corpus.read_text(encoding="utf-8").splitlines()
        keep = sorted(np.random.default_rng(seed).choice(len(lines), size=min(n, len(lines)), replace=False).tolist())
        path.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    return path


def fitted_bases(cache: Path, hook: str, out: Path, ica: bool) -> list[Path]:
    """Neuron, PCA, ICA and random bases of the pooled vectors at `hook` (fitted on them, as `baselines` does on tokens)."""
    from sae.baselines import collect, fit_ica, neuron_basis, pca_from_moments, random_basis

    with PooledCache(cache) as c:
        x = torch.from_numpy(c.pooled(hook))
        model = c.model_id
    config = {"hook": hook, "model_id": model, "fitted_on": str(cache)}
    moments, sample = collect([x], x.shape[1], max_sample=len(x), progress=False)
    bases = {"neuron": neuron_basis(x.shape[1], dict(config)), "pca": pca_from_moments(moments, sample, dict(config)),
             "random": random_basis(x.shape[1], dict(config), seed=0)}
    if ica and len(x) >= 2 * x.shape[1]:  # FastICA needs more documents than dimensions
        bases["ica"] = fit_ica(sample, dict(config), seed=0)
    folders = []
    for kind, basis in bases.items():
        folder = out / kind
        if not (folder / "config.json").exists():
            basis.save(folder)
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/describe_study")
    parser.add_argument("--wiki", type=int, default=2000)
    parser.add_argument("--tweets", type=int, default=2000)
    parser.add_argument("--cluster-threshold", type=float, default=0.6,
                        help="for the Wikipedia descriptions; the tweets' three labels are never merged (0): "
                             "all-MiniLM-L6-v2 puts 'positive' and 'negative' within cosine distance 0.5")
    parser.add_argument("--cluster", default="community", choices=["community", "agglomerative"])
    parser.add_argument("--min-community", type=int, default=10)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--rules", default="paper,lift", help="paper and/or lift (ours), comma-separated")
    parser.add_argument("--top-percent", type=float, default=1.0)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--subjects", default="0,1,2", help="indices into SUBJECTS")
    parser.add_argument("--causal-documents", type=int, default=None,
                        help="the causal model pools a seeded random N of each sample's documents (it is ~5x slower)")
    parser.add_argument("--ica", action="store_true", help="also fit FastICA on the pooled vectors (slow: on 2 busy "
                                                           "cores it did not finish 100 iterations in 5 minutes)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="MODEL@HOOK=DIR",
                        help="more dictionaries (e.g. an SAE trained on the token-level cache) for one subject")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for corpus_name, n in (("wiki", args.wiki), ("tweets", args.tweets)):
        if n <= 0:
            continue
        corpus = sample_corpus(corpus_name, n, out)
        desc_field, gold = CORPORA[corpus_name]
        descriptors = out / f"{corpus_name}_descriptors"
        descriptors_command(DescriptorsSettings(corpus=str(corpus), generator=f"field:{desc_field}",
                                                cluster_threshold=args.cluster_threshold if corpus_name == "wiki"
                                                else 0.0, cluster=args.cluster, min_community=args.min_community,
                                                out=str(descriptors)))
        n_lines = sum(1 for _ in corpus.open(encoding="utf-8"))
        for i in map(int, args.subjects.split(",")):
            model, pool, hook = SUBJECTS[i]
            tag = f"{corpus_name}_{model}_{pool}"
            cache = out / f"{tag}.h5"
            source = corpus
            if model == "default" and args.causal_documents and args.causal_documents < n_lines:
                # a seeded random subset, not the first N: the samples keep the corpus's order, and the tweets
                # file is sorted by sentiment (the first 1,000 held almost no positive tweet)
                source = subset(corpus, args.causal_documents, out)
                tag += f"_{args.causal_documents}"
                cache = out / f"{tag}.h5"
            if not cache.exists():
                cache_activations(model=model, corpus=str(source), hooks=[hook], context_length=128, batch_size=32,
                                  dtype="float32", out=cache, pool=pool, progress=False)
            dicts = fitted_bases(cache, hook, out / f"{tag}_dicts", args.ica)
            dicts += [Path(p) for key, p in (e.split("=", 1) for e in args.extra) if key == f"{model}@{hook}"]
            probe = out / f"{tag}_dicts" / "probe"
            if not (probe / "config.json").exists():
                probe_command(ProbeSettings(cache=str(cache), hook=hook, descriptors=str(descriptors), field=gold,
                                            min_documents=10, out=str(probe)))
            for rule in args.rules.split(","):
                ours = dict(min_lift=2.0, min_exemplars=5, frequency="documents") if rule == "lift" else {}
                name = f"{tag}_described" + ("_lift" if rule == "lift" else "")
                print(f"== {tag} ({hook}), {rule} rule ==")
                summary = describe_command(DescribeSettings(
                    cache=str(cache), dictionaries=[str(d) for d in [*dicts, probe]], descriptors=str(descriptors),
                    top_percent=args.top_percent, threshold=args.threshold, gold_field=gold, splits=args.splits,
                    out=str(out / name), plot=str(out / f"{name}.png"), overwrite=True, **ours))
                results[name] = summary
    corpora = ("w" if args.wiki else "") + ("t" if args.tweets else "")
    (out / f"study_{args.subjects.replace(',', '')}_{corpora}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
