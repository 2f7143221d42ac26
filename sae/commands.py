"""CLI entry points of the dictionary stage: each takes its settings object (see `sae.settings`)."""

from __future__ import annotations

from pathlib import Path

from activations.devices import check_device
from sae.settings import BaselinesSettings, EvaluateSettings, ExportSettings, TrainSettings

EXPORT_SUBFOLDER = {"saelens": "saelens"}


def _export_each(folders: list[Path], export: str | None) -> None:
    """Write `<folder>/saelens/` beside each dictionary so it can be used in SAELens without another command."""
    if export is None:
        return
    from sae.export import export_saelens
    from sae.io import load

    for folder in folders:
        path = export_saelens(load(folder), Path(folder) / EXPORT_SUBFOLDER[export])
        print(f"wrote SAELens layout to {path}")


def train_sae_command(settings: TrainSettings) -> list[Path]:
    from activations.distributed import launch_from_env
    from common.runstate import claim_output
    from sae.data import split_cache
    from sae.train import train_sweep

    check_device(settings.device)
    settings.validate()
    launch = launch_from_env()
    if launch.distributed:  # under torchrun with N > 1; a single process takes the path below, unchanged
        from sae.distributed_command import train_sae_distributed

        return train_sae_distributed(settings, launch, export=lambda folders: _export_each(folders, settings.export))
    # no folder-wide record: each dictionary folder records the settings that trained it (`sae.train`)
    with claim_output(settings.out, None, None, record=None):
        source, held_out = split_cache(settings.cache, settings.hook, settings.eval_fraction,
                                       skip_first=not settings.keep_first_position, sink_factor=settings.sink_factor)
        folders = train_sweep(source, settings, settings.out, device=settings.device, eval_source=held_out)
        _export_each(folders, settings.export)
    return folders


def baselines_command(settings: BaselinesSettings) -> list[Path]:
    from common.runstate import claim_output
    from sae.fit_baselines import ICA_MAX_SAMPLES, fit_baselines_from_cache

    s = settings
    with claim_output(s.out, None, None, record=None):  # each fitted folder records its settings (`sae.fit_baselines`)
        folders = fit_baselines_from_cache(s.cache, s.hook, list(s.kinds), s.out, tokens=s.tokens, k=s.k,
                                           topk_from=s.topk_from, seed=s.seed, eval_fraction=s.eval_fraction,
                                           skip_first=not s.keep_first_position, sink_factor=s.sink_factor,
                                           ica_samples=ICA_MAX_SAMPLES if s.ica_samples is None else s.ica_samples,
                                           allow_model_mismatch=s.allow_model_mismatch)
        _export_each(folders, s.export)
    return folders


def evaluate_command(settings: EvaluateSettings) -> list[dict]:
    from contextlib import ExitStack

    from common.locks import output_lock
    from common.runstate import check_output_file
    from sae.evaluate import evaluate_dictionaries

    s = settings
    for flag, path in (("--plot", s.plot), ("--density-plot", s.density_plot)):
        if path is not None:
            check_output_file(path, flag)
    with ExitStack() as held:  # it rewrites each dictionary's config.json (folders it may not write are not locked)
        for folder in dict.fromkeys(s.dicts):
            if Path(folder).is_dir():
                held.enter_context(output_lock(folder, folder=True, flag="--dict", optional=True))
        return evaluate_dictionaries(s.cache, list(s.dicts), tokens=s.tokens, mmcs_to=s.mmcs_to, model=s.model,
                                     no_model=s.no_model, ce_contexts=s.ce_contexts, plot=s.plot,
                                     eval_fraction=s.eval_fraction, keep_first_position=s.keep_first_position,
                                     density_plot=s.density_plot, sink_factor=s.sink_factor,
                                     allow_model_mismatch=s.allow_model_mismatch)


def export_command(settings: ExportSettings) -> Path:
    from common.runstate import claim_output
    from sae.export import export_saelens
    from sae.io import load

    with claim_output(settings.out, None, None, record=None):  # rewritten whole each time: nothing to compare
        path = export_saelens(load(settings.dictionary), settings.out)
    print(f"wrote SAELens layout (cfg.json + sae_weights.safetensors) to {path}")
    return path
