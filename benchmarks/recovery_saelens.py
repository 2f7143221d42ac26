"""The SAELens side of `bench_recovery.py`: its standard L1 SAE trained at its own defaults on our batches.

Imported only when `bench_recovery.py --saelens` runs in the benchmark venv
(/work/bench-venv, which has sae-lens); the toolkit never imports sae_lens.

"Its defaults" are SAELens 6's, read from its source:
`StandardTrainingSAEConfig` (l1_coefficient 1.0, lp_norm 1, l1_warm_up_steps
0, decoder_init_norm 0.1, apply_b_dec_to_input True, normalize_activations
"none") and `LanguageModelSAERunnerConfig` (lr 3e-4, constant schedule,
no lr warm-up or decay, Adam betas (0.9, 0.999), train_batch_size_tokens
4096). Its `SAETrainer` adds what every SAELens run gets: gradient-norm
clipping at 1 and the L1 penalty weighted by each latent's decoder norm
(`StandardTrainingSAE.calculate_aux_loss`). It trains on the same cache
split, the same tokens (`--tokens` of them, drawn by our `CacheSource`), and
its inference save is loaded by our SAELens loader, so both libraries are
measured by the same metric code.
"""

from __future__ import annotations

from pathlib import Path


def saelens_defaults() -> dict:
    """The defaults this benchmark reads from SAELens itself (so a new SAELens version is reported, not assumed)."""
    import sae_lens
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig

    sae_cfg = StandardTrainingSAEConfig(d_in=1, d_sae=1)
    fields = LanguageModelSAERunnerConfig.__dataclass_fields__
    runner = {k: fields[k].default for k in ("lr", "lr_scheduler_name", "lr_warm_up_steps", "lr_decay_steps",
                                             "adam_beta1", "adam_beta2", "train_batch_size_tokens")}
    return {"version": sae_lens.__version__, "l1_coefficient": sae_cfg.l1_coefficient,
            "l1_warm_up_steps": sae_cfg.l1_warm_up_steps, "decoder_init_norm": sae_cfg.decoder_init_norm,
            **runner}


def train_saelens_l1(source, d_sae: int, tokens: int, seed: int, out: Path, batch: int | None = None) -> Path:
    """Train SAELens's StandardTrainingSAE at its defaults on `tokens` vectors of `source`; returns its save folder.

    `batch` replaces SAELens's default batch (4096 vectors) only, e.g. by ours (256), so that both libraries take
    the same number of steps on the same tokens.
    """
    import torch
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    defaults = saelens_defaults()
    batch = int(batch or defaults["train_batch_size_tokens"])
    torch.manual_seed(seed)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=source.d_in, d_sae=d_sae))
    cfg = SAETrainerConfig(total_training_samples=tokens, train_batch_size_samples=batch, lr=defaults["lr"],
                           lr_scheduler_name=defaults["lr_scheduler_name"],
                           lr_warm_up_steps=defaults["lr_warm_up_steps"], lr_decay_steps=defaults["lr_decay_steps"],
                           adam_beta1=defaults["adam_beta1"], adam_beta2=defaults["adam_beta2"],
                           lr_end=defaults["lr"], logger=LoggingConfig(log_to_wandb=False))
    # a source may drop a sink token from a batch, so draw more than needed: the trainer stops at `tokens`
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(source.batches(batch, 2 * tokens, seed)))
    trainer.fit()
    sae.save_inference_model(out)
    return out
