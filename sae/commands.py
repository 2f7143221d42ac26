"""CLI entry points of the dictionary stage; keyword names are cli.py's argparse dest names."""

from __future__ import annotations

from pathlib import Path

from activations.errors import UserError


EXPORT_FORMATS = ("saelens",)
EXPORT_SUBFOLDER = {"saelens": "saelens"}


def _check_export(export: str | None) -> None:
    """Fail before any training or fitting, not after an hour of it."""
    if export is not None and export not in EXPORT_FORMATS:
        raise UserError(f"--export {export!r} is not supported: use {', '.join(EXPORT_FORMATS)}")


def _export_each(folders: list[Path], export: str | None) -> None:
    """Write `<folder>/saelens/` beside each dictionary so it can be used in SAELens without another command."""
    if export is None:
        return
    from sae.export import export_saelens
    from sae.io import load

    for folder in folders:
        path = export_saelens(load(folder), Path(folder) / EXPORT_SUBFOLDER[export])
        print(f"wrote SAELens layout to {path}")


def train_sae_command(cache: str, hook: str, ratio: list[float], l1: list[float], batch_size: int = 256,
                      lr: float = 1e-3, tokens: int = 1_000_000, tied: bool = True, seed: int = 0,
                      checkpoint_every: int = 500, device: str = "cpu", out: str = "dictionaries",
                      export: str | None = None) -> list[Path]:
    import torch

    from sae.data import CacheSource
    from sae.train import TrainSettings, train_sweep

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for but CUDA is not available here: use --device cpu")
    settings = TrainSettings(hook=hook, ratios=list(ratio), l1s=list(l1), batch_size=batch_size, lr=lr,
                             tokens=tokens, tied=tied, seed=seed, checkpoint_every=checkpoint_every)
    settings.validate()
    _check_export(export)
    source = CacheSource(Path(cache), hook)
    folders = train_sweep(source, settings, out, device=device)
    _export_each(folders, export)
    return folders


def baselines_command(cache: str, hook: str, kinds: list[str], tokens: int = 1_000_000,
                      topk_from: list[str] | None = None, k: list[int] | None = None, seed: int = 0,
                      out: str = "dictionaries", export: str | None = None, ica_samples: int | None = None) -> list[Path]:
    from sae.fit_baselines import ICA_MAX_SAMPLES, fit_baselines_from_cache

    _check_export(export)
    folders = fit_baselines_from_cache(cache, hook, list(kinds), out, tokens=tokens, k=k, topk_from=topk_from, seed=seed,
                                       ica_samples=ICA_MAX_SAMPLES if ica_samples is None else ica_samples)
    _export_each(folders, export)
    return folders


def evaluate_command(cache: str, dicts: list[str], tokens: int = 200_000, mmcs_to: str | None = None,
                     model: str | None = None, no_model: bool = False, ce_contexts: int = 64,
                     plot: str | None = None) -> list[dict]:
    from sae.evaluate import evaluate_dictionaries

    return evaluate_dictionaries(cache, list(dicts), tokens=tokens, mmcs_to=mmcs_to, model=model,
                                 no_model=no_model, ce_contexts=ce_contexts, plot=plot)


def export_command(dict: str, format: str = "saelens", out: str = "export") -> Path:  # noqa: A002 (argparse dests)
    from sae.export import export_saelens
    from sae.io import load

    if format != "saelens":
        raise UserError(f"--format {format!r} is not supported: use saelens")
    path = export_saelens(load(dict), out)
    print(f"wrote SAELens layout (cfg.json + sae_weights.safetensors) to {path}")
    return path
