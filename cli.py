"""Command line: argument parsing only. Each subcommand calls one function.

Imports happen inside the dispatch, so `python cli.py --help` stays instant
and a missing optional dependency only affects the subcommand that needs it.
Errors the user can fix are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


def _csv(value: str) -> list[str]:
    return [v for v in (s.strip() for s in value.split(",")) if v]


def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="run a model over a corpus and cache activations of many hooks to HDF5")
    p.add_argument("--model", default="default", help="hub id, local folder, or 'default' (offline SmolLM2-135M-Instruct)")
    p.add_argument("--corpus", default="default", help=".txt file, folder of .txt, .jsonl with 'text', or 'default' (Wikipedia leads)")
    p.add_argument("--hooks", required=True, type=_csv, help="comma-separated hook names, e.g. blocks.1.hook_resid_post,blocks.3.hook_resid_post")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype of activations")
    p.add_argument("--fragments", action="store_true", help="one context per document (the explanation set), not packed text")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing file made with other settings")
    p.set_defaults(_run="activations.commands:cache_command")


def _add_hooks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hooks", help="list a model's hook points with their widths")
    p.add_argument("--model", default="default")
    p.set_defaults(_run="activations.commands:hooks_command")


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain, simulate and score dictionary features")
    p.add_argument("--cache", required=True, help="fragment cache (cache --fragments)")
    p.add_argument("--dict", dest="dicts", nargs="+", required=True)
    p.add_argument("--features", type=int, default=50, help="features per dictionary (random, seeded)")
    p.add_argument("--feature-ids", type=int, nargs="+", default=None)
    p.add_argument("--explainer", default="tokens", help="tokens | local:<hub id|folder|default> | openai:<model>")
    p.add_argument("--simulator", default="tokens", help="tokens | local:<...> | openai:<model>")
    p.add_argument("--format", choices=["highlight", "bills"], default="highlight")
    p.add_argument("--k", type=int, default=1, help="best-of-k explanations")
    p.add_argument("--random", choices=["nonzero", "any"], default="nonzero")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (vLLM, llama.cpp server, ...)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(_run="explain.commands:explain_command")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="mean explanation score per basis per layer with 95%% CIs")
    p.add_argument("--explanations", nargs="+", required=True)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", dest="json_path", default=None)
    p.set_defaults(_run="explain.commands:compare_command")


def _add_patch_ioi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch-ioi", help="IOI feature patching: KL vs number of patched features")
    p.add_argument("--model", default="default")
    p.add_argument("--dict", dest="dicts", nargs="+", required=True)
    p.add_argument("--n-prompts", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None, help="PNG of KL vs number of patched features")
    p.add_argument("--device", default="cpu", help="cpu or cuda; on cuda candidate features are evaluated in wide batches")
    p.add_argument("--candidates", type=int, default=None,
                   help="run the greedy only on the K features with the largest integrated-gradient attribution "
                        "(fast on CPU; default: every feature, the paper's protocol); ioi.json also gets the "
                        "measured KL of the top-K, 2K, 4K, ... features by that ranking as screen_curve")
    p.add_argument("--names", type=_csv, default=None,
                   help="comma-separated first names to use (each must be one token with a leading space); "
                        "default: a built-in list of common names")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an IOI run with other settings in --out (by default a rerun with the same "
                        "settings keeps the dictionaries already done)")
    p.set_defaults(_run="causal.commands:patch_ioi_command")


def _add_ioi_layers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ioi-layers", help="which layer carries the IOI information (whole-vector patches per layer)")
    p.add_argument("--model", default="default")
    p.add_argument("--n-prompts", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", type=_csv, default=None, help="comma-separated one-token first names")
    p.add_argument("--json", dest="json_path", default=None, help="write the table as JSON")
    p.add_argument("--device", default="cpu")
    p.set_defaults(_run="causal.layers:ioi_layers_command")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a static HTML dashboard (index.html) of a run folder")
    p.add_argument("--run", required=True, help="run folder (from `demo`, or any folder of dictionaries, explanations, ioi.json)")
    p.add_argument("--out", default=None, help="output folder for index.html and its PNGs (default: RUN/report)")
    p.set_defaults(_run="report.commands:report_command")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline offline, corpus to dashboard, in ~15 min on 2 CPU cores; resumable")
    p.add_argument("--out", default="runs/demo", help="run folder (rerun the same command to resume)")
    p.add_argument("--llm", default="local:default",
                   help="explainer and simulator for the few LLM-scored features: local:<...>, openai:<model>, or none")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for --llm openai:<model>")
    p.add_argument("--device", default="cpu")
    p.set_defaults(_run="report.commands:demo_command")


@dataclass(frozen=True)
class Subcommand:
    """One row of the command line: `run` ("module:function") is called with one `settings` object.

    `settings` ("module:Class") is a dataclass whose `option()` fields are the
    flags (see `activations.options`); its module imports nothing heavy, so
    `--help` stays instant.
    """

    name: str
    help: str
    run: str
    settings: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("train-sae", "train sparse autoencoders; a whole (ratio, l1) sweep in one pass",
               "sae.commands:train_sae_command", "sae.settings:TrainSettings"),
    Subcommand("baselines", "fit neuron / PCA / ICA / random (and top-k controls) bases",
               "sae.commands:baselines_command", "sae.settings:BaselinesSettings"),
    Subcommand("evaluate", "FVU, L0, dead features, MMCS, and KL/CE with the reconstruction spliced in",
               "sae.commands:evaluate_command", "sae.settings:EvaluateSettings"),
    Subcommand("export", "export a dictionary in another library's layout",
               "sae.commands:export_command", "sae.settings:ExportSettings"),
)

# Subcommands not yet moved to a settings dataclass: argparse by hand, called with keyword arguments.
_LEGACY = (_add_cache, _add_hooks,
           _add_explain, _add_compare, _add_patch_ioi, _add_ioi_layers, _add_report, _add_demo)


def _load(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def build_parser() -> argparse.ArgumentParser:
    from activations.options import add_options

    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<subcommand>")
    for add in _LEGACY:
        add(sub)
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        add_options(p, _load(command.settings))
        p.set_defaults(_command=command)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is a complete, fixable one-line answer."""
    from activations.errors import UserError

    return (UserError,)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = getattr(args, "_command", None)
        if command is not None:
            from activations.options import from_namespace

            _load(command.run)(from_namespace(_load(command.settings), args))
        else:
            kwargs = {k: v for k, v in vars(args).items() if k not in ("_run", "command")}
            _load(args._run)(**kwargs)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
