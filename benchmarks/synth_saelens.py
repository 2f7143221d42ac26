"""SAELens's side of `bench_synth.py`: its kinds trained on our batches, and SynthSAEBench's evaluation of any SAE.

Runs in the benchmark virtual environment. SAELens trains with its own
`SAETrainer` (the loop `SyntheticSAERunner` uses, with that runner's
settings: Adam 0.9/0.999, constant learning rate, dead-feature window 1,000)
on a data provider that yields exactly the batches our trainer reads, so
both libraries see the same samples in the same run.
"""

from __future__ import annotations

from typing import Iterator

import torch

EVAL_SEED = 4321  # every SAE is evaluated on the same fresh draw from the generator
SAELENS_KINDS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")


def family(kind: str) -> str:
    """The SAELens kind one of our kinds is compared with (same architecture); unknown kinds compare with themselves."""
    return {"tied_sae": "standard", "untied_sae": "standard"}.get(kind, "matryoshka" if "matryoshka" in kind else kind)


def training_sae(kind: str, value: float, d_in: int, width: int, matryoshka_widths: tuple[int, ...]):
    """A SAELens training SAE: `value` is k (topk, batchtopk, matryoshka), the L1 coefficient (standard) or the
    target L0 of JumpReLU's quadratic penalty (Gemma Scope 2's, so the run lands at an L0 without a sweep)."""
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAEConfig,
                          StandardTrainingSAEConfig, TopKTrainingSAEConfig)
    from sae_lens.registry import get_sae_training_class

    if kind == "standard":
        cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=width, l1_coefficient=float(value))
    elif kind == "topk":
        cfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=int(value))
    elif kind == "batchtopk":
        cfg = BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=int(value))
    elif kind == "matryoshka":  # as the published experiments configure it (aux loss on the prefixes)
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=int(value),
                                                   matryoshka_widths=[w for w in matryoshka_widths if w < width] + [width],
                                                   use_matryoshka_aux_loss=True)
    elif kind == "jumprelu":  # the published experiments' thresholds and bandwidth; quadratic L0 penalty
        cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=width, jumprelu_init_threshold=0.5, jumprelu_bandwidth=2.0,
                                        jumprelu_sparsity_loss_mode="quadratic", target_l0=float(value),
                                        decoder_init_norm=0.5)
    else:
        raise SystemExit(f"--saelens-kinds: {kind!r} is not one of {', '.join(SAELENS_KINDS)}")
    cls, _ = get_sae_training_class(cfg.architecture())
    return cls(cfg)


def train_saelens(sae, batches: Iterator[torch.Tensor], samples: int, batch_size: int, lr: float, device: str,
                  scaling_factor: float | None = None, dead_window: int = 1000):
    """Train `sae` on `batches` (SAELens's SAETrainer, SyntheticSAERunner's settings); returns the trained SAE.

    `scaling_factor` s: SAELens's "expected_average_only_in" normalisation with s given instead of estimated (its
    estimate would read batches off `batches` first, so the SAE would not train on the same ones); it trains on
    s·x and folds s into the weights at the end, as SAELens does with its own estimate. `dead_window`: steps
    without firing that make a latent dead (1,000 in SyntheticSAERunner).
    """
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(total_training_samples=samples, train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
                           lr_scheduler_name="constant", device=device, n_checkpoints=0, checkpoint_path=None,
                           save_final_checkpoint=False, dead_feature_window=dead_window,
                           feature_sampling_window=2 * dead_window,
                           logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2 ** 31 - 1),
                           n_batches_for_norm_estimate=1000)

    def save_checkpoint(*_args, **_kwargs) -> None:  # no checkpoints in a benchmark run
        return None

    trainer = SAETrainer(cfg=cfg, sae=sae.to(device), data_provider=(b.to(device) for b in batches),
                         save_checkpoint_fn=save_checkpoint)
    if scaling_factor is not None:
        sae.cfg.normalize_activations = "expected_average_only_in"
        trainer.activation_scaler.scaling_factor = float(scaling_factor)
    return trainer.fit()


class Replay:
    """The generator's `sample(n)` replaying one fixed draw of true feature activations, kept sparse.

    Drawing is the slow part on a CPU (~1k samples/s for 4k features), so the
    evaluation draw is made once and every SAE is measured on the same samples,
    in batches of `batch_size` (the evaluation's batch size).
    """

    def __init__(self, generator, samples: int, batch_size: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_SEED)
            self.parts = [generator.sample(batch_size).to_sparse() for _ in range(max(1, samples // batch_size))]
        self.samples = batch_size * len(self.parts)
        self.position = 0

    def reset(self) -> "Replay":
        self.position = 0
        return self

    def sample(self, n: int) -> torch.Tensor:
        part = self.parts[self.position]
        if part.shape[0] != n:
            raise ValueError(f"the evaluation draw is in batches of {part.shape[0]}, asked for {n}")
        self.position += 1
        return part.to_dense()


def evaluate(sae, model, replay: Replay, batch_size: int) -> dict:
    """SynthSAEBench's own evaluation (`eval_sae_on_synthetic_data`) on the fixed draw `replay`; a flat dict."""
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    result = eval_sae_on_synthetic_data(sae, model.feature_dict, replay.reset(), num_samples=replay.samples,
                                        batch_size=batch_size)
    return {"l0": result.sae_l0, "f1": result.classification.f1_score, "precision": result.classification.precision,
            "recall": result.classification.recall, "mcc": result.mcc, "uniqueness": result.uniqueness,
            "explained_variance": result.explained_variance, "dead": result.dead_latents, "true_l0": result.true_l0,
            "shrinkage": result.shrinkage}


def load_ours(folder):
    """Our dictionary as SAELens loads our export (`<folder>/saelens`), so the metric code is theirs."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(folder / "saelens"))
