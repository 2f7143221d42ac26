"""`cli.py baselines`: fit every requested basis from one pass over the cache.

PCA's moments and ICA's subsample come from the same streamed pass, so
asking for pca, ica and both top-k controls reads the data once.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.notes import clipped_line
from common.runstate import require_same_digest, settings_digest
from sae.baselines import (ICA_MAX_SAMPLES, SAMPLE_BYTES, collect, fit_ica, neuron_basis, pca_from_moments,
                           random_basis, sample_limit, topk_control)
from sae.data import BatchSource, split_cache
from sae.io import CONFIG_FILE, read_config, save_dictionary
from sae.registry import fitted_kinds, kind_spec
from sae.settings import BaselinesSettings

READ_BATCH = 4096


def resolve_ks(ks: list[int] | None, topk_from: list[str] | None) -> list[int]:
    """k values for the top-k controls: --k, or the mean L0 of each SAE named by --topk-from (one control per k)."""
    if ks and topk_from:
        raise UserError("pass either --k or --topk-from, not both")
    if ks:
        bad = [k for k in ks if k < 1]
        if bad:
            raise UserError(f"--k {bad[0]} must be at least 1")
        return sorted({int(k) for k in ks})
    if not topk_from:
        raise UserError("pca_topk / ica_topk need a sparsity: pass --topk-from SAE_FOLDER (its mean L0) or --k N")
    out = set()
    for folder in topk_from:
        l0 = read_config(folder).get("metrics", {}).get("l0")
        if l0 is None:
            raise UserError(f"{folder} has no mean L0 in its config.json: run `cli.py evaluate --dict {folder}` "
                            "first, or pass --k N")
        out.add(max(1, int(round(float(l0)))))
    return sorted(out)


def _control_of(kind: str) -> str | None:
    """The fitted basis `kind` is a top-k control of (its registry row), or None."""
    return kind_spec(kind).topk_control_of


def _check_topk_from(folders: list[str], source: BatchSource, hook: str, allow: bool) -> list[dict]:
    """An SAE whose mean L0 sets k must be of this hook and of the cache's model: another's sparsity means nothing
    here. Returns the pairing entries (`activations.provenance.check_pairing`)."""
    from types import SimpleNamespace

    from activations.provenance import check_pairing

    entries = []
    for folder in folders:
        config = read_config(folder)
        sae = SimpleNamespace(name=Path(folder).name, config=config)
        if config.get("hook") and config["hook"] != hook:
            raise UserError(f"--topk-from {folder} was trained at hook {config['hook']!r}, not {hook!r}: pass an SAE "
                            f"of {hook}, or --k N")
        entries.append(check_pairing(sae, getattr(source, "model", {}), "the cache", allow=allow))
    return entries


def _folder_name(kind: str, k: int | None) -> str:
    return f"{kind}_k{k}" if _control_of(kind) else kind


def fit_baselines(source: BatchSource, hook: str, kinds: list[str], out: str | Path, tokens: int = 1_000_000,
                  k: int | list[int] | None = None, topk_from: str | list[str] | None = None, seed: int = 0,
                  progress: bool = True, ica_samples: int = ICA_MAX_SAMPLES,
                  eval_fraction: float | None = None, allow_model_mismatch: bool = False) -> list[Path]:
    known = fitted_kinds()
    unknown = [x for x in kinds if x not in known]
    if unknown or not kinds:
        raise UserError(f"unknown --kinds {unknown or kinds}: choose from {','.join(known)}")
    kinds = list(dict.fromkeys(kinds))
    if tokens < 1:
        raise UserError(f"--tokens {tokens} must be positive")
    if ica_samples < 2:
        raise UserError(f"--ica-samples {ica_samples} must be at least 2 (FastICA's time grows with it; 8192+ is typical)")
    need_k = any(_control_of(x) for x in kinds)
    ks = [k] if isinstance(k, int) else k
    froms = [topk_from] if isinstance(topk_from, (str, Path)) else topk_from
    kks = resolve_ks(ks, froms) if need_k else []
    borrowed = _check_topk_from(froms if need_k and not ks else [], source, hook, allow_model_mismatch)
    d = source.d_in
    if kks and kks[-1] > d:
        if ks:
            raise UserError(f"k={kks[-1]} is larger than the width {d} of {hook}: pass a smaller --k")
        # An SAE of a sweep can be denser than the layer is wide; keeping k >= d would be the full basis.
        too_dense = [k for k in kks if k > d]
        kks = [k for k in kks if k <= d]
        print(f"note: no top-k control for mean L0 {', '.join(map(str, too_dense))} of --topk-from: "
              f"more than the width {d} of {hook}")
        if not kks:
            raise UserError(f"every --topk-from SAE has a mean L0 above the width {d} of {hook}: "
                            "pass sparser SAEs or --k")
    out = Path(out)
    n_fit = min(tokens, source.n_tokens)
    if tokens > source.n_tokens:
        print(clipped_line("--tokens", tokens, source.n_tokens, "training tokens of the cache"))
    ident = {"hook": hook, "model_id": source.model_id, "d_in": d, "tokens": n_fit, "seed": seed,
             "data_tokens": source.info.get("cache_tokens")}
    if source.info.get("contexts") is not None:  # a split of a cache: which part was fitted on decides the fit
        ident.update(data_contexts=source.info["contexts"], position_0=source.info.get("position_0"))
    if source.info.get("sink_norm_limit") is not None:  # absent (old folders still match) when no token is left out
        ident["sink_norm_limit"] = source.info["sink_norm_limit"]
    # The ICA subsample size changes only the ICA fit; left out of the identity at its default so
    # folders fitted before the option existed still match.
    ica_ident = ident if ica_samples == ICA_MAX_SAMPLES else {**ident, "ica_samples": ica_samples}
    # (kind, k) -> folder; a top-k control exists once per k, all from the same fitted basis
    targets = {}
    for kind in kinds:
        for kk in (kks if _control_of(kind) else [None]):
            targets[(kind, kk)] = out / _folder_name(kind, kk)

    def record_of(kind: str, kk: int | None) -> dict:
        own = ica_ident if (_control_of(kind) or kind) == "ica" else ident
        return own if kk is None else {**own, "k": kk}

    def identity_of(kind: str, kk: int | None) -> dict:
        """What a folder's config.json records of the fit: the digest a rerun compares, and the settings it names."""
        return {"fit_identity": settings_digest(record_of(kind, kk)), "fit_identity_record": record_of(kind, kk)}

    todo = []
    for (kind, kk), folder in targets.items():
        if folder.exists():
            if not (folder / CONFIG_FILE).exists():
                raise UserError(f"{folder} exists but is not a dictionary folder: move it away or choose another --out")
            require_same_digest(read_config(folder), "fit_identity", record_of(kind, kk),
                                f"--out {str(out)!r}: {folder.name}", source=CONFIG_FILE, what="dictionary")
            print(f"{folder} is already fitted with these settings; skipping")
            continue
        todo.append((kind, kk))
    base = {"hook": hook, "model_id": source.model_id, **getattr(source, "model", {}), "data": dict(source.info),
            **identity_of("pca", None),
            "fit": {"tokens": n_fit, "seed": seed, "eval_fraction": eval_fraction}}
    if any(p["status"].startswith("mismatch") for p in borrowed):
        base["topk_from_pairing"] = borrowed  # --allow-model-mismatch was used: the k came from another model's SAE
    fitted = {}
    todo_kinds = {kind for kind, _ in todo}
    bases = {_control_of(kind) or kind for kind in todo_kinds}  # a top-k control needs its basis fitted
    if {"pca", "ica"} & bases:
        batch = max(1, min(READ_BATCH, n_fit))
        keep = sample_limit(d)
        moments, sample = collect(source.batches(batch, n_fit, seed), d, keep, progress=progress,
                                  desc=f"reading {n_fit} tokens")
        if "pca" in bases:
            fitted["pca"] = pca_from_moments(moments, sample, {**base})
        if "ica" in bases:
            n_ica = min(sample.shape[0], ica_samples)
            if n_ica < 2 * d:
                fix = f"raise --ica-samples to {2 * d}" if ica_samples < 2 * d else "raise --tokens or cache more"
                raise UserError(f"ICA needs at least {2 * d} tokens for width {d}, got {n_ica}: {fix}")
            if ica_samples != ICA_MAX_SAMPLES and n_ica < ica_samples:  # chosen, not the default (n_tokens_fitted)
                print(clipped_line("--ica-samples", ica_samples, n_ica,
                                   f"sampled tokens (at most --tokens, within a {SAMPLE_BYTES >> 20} MiB sample)"))
            if progress:
                print(f"fitting FastICA on {n_ica} tokens x {d} dims...")
            fitted["ica"] = fit_ica(sample[:n_ica], {**base, **identity_of("ica", None)}, seed=seed)
    for kind, kk in todo:
        if kind == "neuron":
            dictionary = neuron_basis(d, base)
        elif kind == "signed_neuron":
            from sae.baselines import signed_neuron_basis

            dictionary = signed_neuron_basis(d, base)
        elif kind == "random":
            dictionary = random_basis(d, {**base}, seed=seed)
        elif kind in ("pca", "ica"):
            dictionary = fitted[kind]
        else:
            dictionary = topk_control(fitted[_control_of(kind)], kk, identity_of(kind, kk))
        save_dictionary(dictionary, targets[(kind, kk)])
        print(f"wrote {targets[(kind, kk)]}")
    return list(targets.values())


def fit_baselines_from_cache(cache: str | Path, hook: str, kinds: list[str], out: str | Path,
                             eval_fraction: float = 0.1, skip_first: bool = True,
                             sink_factor: float = BaselinesSettings.sink_factor, **kwargs) -> list[Path]:
    """Fit on the training part of the cache only: the held-out contexts stay unseen, as for the SAEs."""
    source, _ = split_cache(cache, hook, eval_fraction, skip_first=skip_first, sink_factor=sink_factor)
    return fit_baselines(source, hook, kinds, out, eval_fraction=eval_fraction, **kwargs)
