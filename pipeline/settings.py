"""Settings of `cli.py demo`: its four flags and every size the demo decides, in one dataclass.

`cli.py` builds `demo`'s flags (--out, --llm, --base-url, --device) from the
`option()` fields; the other fields are the demonstration's sizes, which
Python callers (tests, notebooks) may change but the command line does not
offer. `to_json()` is RUN/demo_settings.json. Imports nothing heavy, so
`cli.py --help` stays instant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from common.errors import UserError
from activations.hooknames import hook_name
from common.options import option

# Settings that only decide where or how fast things run; a rerun may change them.
RUNTIME_FIELDS = ("device", "progress")


@dataclass
class DemoSettings:
    """Everything the demo decides; written (without `out`, which is where it is written) to RUN/demo_settings.json."""

    out: str = option("runs/demo", identity=False, help="run folder (rerun the same command to resume)")
    model: str = "default"
    corpus: str = "default"
    layer: int = 3
    site: str = "hook_resid_post"
    # activation caches
    context_length: int = 128
    train_cache_tokens: int = 150_000
    fragment_length: int = 64
    fragments: int = 2_500  # documents in the explanation set (one fragment each)
    cache_batch_size: int = 32
    dtype: str = "float16"
    # dictionaries
    ratio: float = 2.0
    # normalised units: at layer 3 these give L0 ≈ 100, 45, 25, 10 (held-out; docs/frontier), so target_l0 has neighbours
    l1s: list[float] = field(default_factory=lambda: [1e-3, 2e-3, 3e-3, 5e-3])
    sae_tokens: int = 300_000  # two epochs over the training cache
    sae_batch_size: int = 256
    lr: float | None = None  # None: the tied SAE's default (sae.settings.DEFAULT_LR)
    baselines: list[str] = field(default_factory=lambda: ["neuron", "pca", "ica", "random"])
    baseline_tokens: int = 150_000
    ica_samples: int = 8_192  # FastICA's time grows with its sample; 8k tokens = 14x the width of 576
    eval_tokens: int = 100_000
    ce_contexts: int = 16  # contexts for KL/ΔCE with the reconstruction spliced in (0: skip)
    # explanations
    target_l0: float = 20.0  # the SAE explained and patched is the one whose L0 is nearest this
    features: int = 30  # per basis, `tokens` explainer and simulator
    llm: str = option("local:default", help="explainer and simulator for the few LLM-scored features: "
                                            "local:<...>, openai:<model>, or none")
    llm_features: int = 3
    llm_kinds: list[str] = field(default_factory=lambda: ["tied_sae"])
    base_url: str | None = option(None, help="OpenAI-compatible endpoint for --llm openai:<model>")
    # IOI patching
    ioi_prompts: int = 16
    ioi_candidates: int | None = 32  # greedy over the K features with the largest attribution (None: all)
    ioi_names: list[str] | None = None
    seed: int = 0
    device: str = option("cpu", identity=False, help="cpu or cuda")
    progress: bool = True

    @property
    def hook(self) -> str:
        return hook_name(self.layer, self.site)

    @property
    def use_llm(self) -> bool:
        return self.llm.lower() != "none" and self.llm_features > 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("out")
        return {**data, "hook": self.hook}

    def validate(self) -> None:
        self.hook  # noqa: B018 (a bad layer or site fails here, before anything runs)
        if self.features < 1 or self.llm_features < 0 or self.ioi_prompts < 1:
            raise UserError("features and ioi_prompts must be at least 1 and llm_features at least 0")
        if self.fragments < 1 or self.train_cache_tokens < self.context_length:
            raise UserError(f"train_cache_tokens must hold at least one context of {self.context_length} tokens "
                            "and fragments must be at least 1")
