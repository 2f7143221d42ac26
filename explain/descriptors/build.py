"""`cli.py descriptors`: every document's descriptors and the clustered vocabulary, written to one folder.

Outputs (all JSON, written atomically): `settings.json` (what a rerun is
checked against), `documents.jsonl` (per document: id, its descriptor
clusters, the raw descriptors, status, the LLM's answer when unreadable, and
its annotation fields and its first 1000 characters, so later stages join
gold labels and show exemplars without the corpus), `vocabulary.json` (cluster name, members with counts, documents),
`summary.json`. LLM calls are cached in `llm_cache.sqlite` and descriptor
embeddings in `embeddings.sqlite`, so a rerun recomputes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from activations.corpus import resolve_corpus
from common.errors import UserError
from common.notes import clipped_line
from common.options import identity_fields
from common.runstate import check_output_folder, claim_output, read_json, write_json_atomic, write_text_atomic
from explain.descriptors.cluster import cluster_descriptors
from explain.descriptors.generate import DocDescriptors, check_field, from_field, from_llm
from explain.descriptors.settings import DescriptorsSettings
from explain.llm.backends import check_local_paths

SETTINGS_FILE = "settings.json"
DOCUMENTS_FILE = "documents.jsonl"
VOCABULARY_FILE = "vocabulary.json"
_TEXT_CHARS = 1000  # of each document kept in documents.jsonl: what a judge is shown as an exemplar


def descriptors_command(settings: DescriptorsSettings) -> dict:
    """Generate, cluster and write (see the module docstring); returns the summary."""
    settings.validate()
    out = check_output_folder(settings.out)
    corpus = resolve_corpus(settings.corpus, settings.text_column, settings.encoding)
    record = {**identity_fields(settings), "corpus": corpus.describe()}
    with claim_output(out, record, settings.overwrite, record=SETTINGS_FILE, what="descriptors run") as claim:
        documents = []
        for doc in corpus.records():
            documents.append(doc)
            if settings.max_documents is not None and len(documents) >= settings.max_documents:
                break
        if settings.max_documents is not None and len(documents) < settings.max_documents:  # summary: documents
            print(clipped_line("--max-documents", settings.max_documents, len(documents), "documents of the corpus"))
        for spec in (settings.generator, settings.compare_generator):
            kind, _, target = (spec or "").partition(":")
            if kind == "field":
                check_field(documents, target)
        check_local_paths([settings.generator, settings.compare_generator], settings.embedder)
        claim.write_record()
        described, example = _generate(settings.generator, documents, out, settings)
        compared = None
        if settings.compare_generator:
            compared = (settings.compare_generator, *_generate(settings.compare_generator, documents, out, settings))
        texts = {doc.id: doc.text[:_TEXT_CHARS] for doc in documents}
        return _cluster_and_write(out, settings, described, texts, example, compared)


def _generate(spec: str, documents: list, out: Path, settings: DescriptorsSettings) -> tuple[list[DocDescriptors],
                                                                                             dict | None]:
    """(descriptors per document, the one-shot example's record or None) of one generator."""
    kind, _, target = spec.partition(":")
    if kind == "field":
        return from_field(documents, target), None
    described, example = from_llm(documents, spec, out / "llm_cache.sqlite", max_tokens=settings.max_tokens,
                                  base_url=settings.base_url, concurrency=settings.concurrency,
                                  example_seed=settings.example_seed, aspects=settings.aspects)
    return described, example.record()


def agreement(first: list[DocDescriptors], second: list[DocDescriptors],
              cluster_of: dict[str, int]) -> tuple[dict, list[dict]]:
    """Per-document agreement of two generators: Jaccard of their raw descriptor sets and of their cluster sets.

    Documents where either generator gave nothing readable are counted
    apart; Jaccard is taken over the documents both described. Returns the
    summary and one row per document.
    """
    from explain.descriptors.assign import jaccard, mean_ci

    raw, clustered, rows = [], [], []
    for a, b in zip(first, second):
        if not a.raw or not b.raw:
            rows.append({"id": a.id, "raw_jaccard": None, "cluster_jaccard": None})
            continue
        ca, cb = {cluster_of[r] for r in a.raw}, {cluster_of[r] for r in b.raw}
        raw.append(jaccard(set(a.raw), set(b.raw)))
        clustered.append(jaccard(ca, cb))
        rows.append({"id": a.id, "raw_jaccard": raw[-1], "cluster_jaccard": clustered[-1], "first": a.raw,
                     "second": b.raw})
    return {"documents_both_described": len(raw), "documents_not_both": len(first) - len(raw),
            "raw_jaccard": mean_ci(raw), "cluster_jaccard": mean_ci(clustered)}, rows


def _cluster_and_write(out: Path, settings: DescriptorsSettings, described: list[DocDescriptors],
                       texts: dict[str, str], example: dict | None = None, compared: tuple | None = None) -> dict:
    from explain.llm.embedder import Embedder

    counts = Counter(r for d in described for r in d.raw)
    embedder = Embedder.from_spec(settings.embedder, store_path=out / "embeddings.sqlite")
    try:
        vocab = cluster_descriptors(counts, embedder.embed, settings.cluster_threshold, settings.cluster,
                                    settings.min_community)
        if compared is not None:  # both generators' descriptors clustered together, nothing pruned: agreement only
            both = counts + Counter(r for d in compared[1] for r in d.raw)
            joint = cluster_descriptors(both, embedder.embed, settings.cluster_threshold, settings.cluster, 1)
            agreed, agreed_rows = agreement(described, compared[1], joint.cluster_of)
    finally:
        embedder.store.close()
    doc_counts = [0] * len(vocab.names)
    lines = []
    for d in described:
        clusters = sorted({vocab.cluster_of[r] for r in d.raw if r in vocab.cluster_of})  # pruned ones are not
        for c in clusters:
            doc_counts[c] += 1
        row = {"id": d.id, "descriptors": [vocab.names[c] for c in clusters], "raw": d.raw, "status": d.status,
               "fields": d.fields, "text": texts.get(d.id, "")}
        if d.answer is not None:
            row["answer"] = d.answer
        lines.append(json.dumps(row, ensure_ascii=False, default=str))
    write_text_atomic(out / DOCUMENTS_FILE, "\n".join(lines) + "\n")
    write_json_atomic(out / VOCABULARY_FILE, vocab.to_json(doc_counts))
    statuses = Counter(d.status for d in described)
    if not vocab.names:
        print(f"warning: no document got a descriptor; see the statuses and answers in {out / DOCUMENTS_FILE}")
    kept = sum(1 for d in described if any(r in vocab.cluster_of for r in d.raw))
    summary = {"documents": len(described), "statuses": dict(statuses), "raw_descriptors": len(counts),
               "clusters": len(vocab.names), "generator": settings.generator, "cluster": settings.cluster,
               "cluster_threshold": settings.cluster_threshold, "min_community": settings.min_community,
               "pruned_descriptors": len(vocab.pruned), "pruned_occurrences": sum(vocab.pruned.values()),
               "documents_with_a_cluster": kept}
    if example is not None:
        summary["example"] = example
    if compared is not None:
        summary["compared"] = {"generator": compared[0], "example": compared[2], **agreed}
        write_text_atomic(out / "agreement.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                          for r in agreed_rows))
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "pruned.json", vocab.pruned)
    pruned = (f"; {len(vocab.pruned)} rare descriptors pruned, {len(described) - kept} documents left without one"
              if settings.cluster == "community" else "")
    print(f"{len(described)} documents, {len(counts)} distinct descriptors -> {len(vocab.names)} clusters "
          f"({settings.cluster}){pruned} in {out} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})")
    return summary


def read_descriptors(folder: str | Path) -> tuple[list[dict], list[dict]]:
    """(documents, vocabulary) of a `cli.py descriptors` folder, checked."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"--descriptors {str(folder)!r} is a file, not a descriptors folder: pass the folder "
                        "`cli.py descriptors --out` wrote (it holds documents.jsonl and vocabulary.json)")
    if not (folder / DOCUMENTS_FILE).exists() or not (folder / VOCABULARY_FILE).exists():
        raise UserError(f"{folder} is not a descriptors folder (no {DOCUMENTS_FILE} / {VOCABULARY_FILE}): write one "
                        "with `python cli.py descriptors --corpus C --generator G --out DIR`")
    vocabulary = read_json(folder / VOCABULARY_FILE, "vocabulary", "rerun `cli.py descriptors`")
    documents = []
    for lineno, raw in enumerate((folder / DOCUMENTS_FILE).read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            try:
                documents.append(json.loads(raw))
            except json.JSONDecodeError as err:
                raise UserError(f"{folder / DOCUMENTS_FILE}:{lineno} is not JSON ({err.msg}): rerun "
                                "`cli.py descriptors` with --overwrite") from err
    return documents, vocabulary
