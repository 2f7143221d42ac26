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


@dataclass(frozen=True)
class Subcommand:
    """One row of the command line: `run` ("module:function") is called with one `settings` object.

    `settings` ("module:Class") is a dataclass whose `option()` fields are the
    flags (see `common.options`); its module imports nothing heavy, so
    `--help` stays instant.
    """

    name: str
    help: str
    run: str
    settings: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("demo", "the whole pipeline offline, corpus to dashboard, in ~15 min on 2 CPU cores; resumable",
               "pipeline.demo:demo_command", "pipeline.settings:DemoSettings"),
    Subcommand("hooks", "list a model's hook points with their widths",
               "activations.commands:hooks_command", "activations.settings:HooksSettings"),
    Subcommand("cache", "run a model over a corpus and cache activations of many hooks to HDF5",
               "activations.commands:cache_command", "activations.settings:CacheSettings"),
    Subcommand("train-sae", "train sparse autoencoders; a whole (ratio, l1) sweep in one pass",
               "sae.commands:train_sae_command", "sae.settings:TrainSettings"),
    Subcommand("baselines", "fit neuron / PCA / ICA / random (and top-k controls) bases",
               "sae.commands:baselines_command", "sae.settings:BaselinesSettings"),
    Subcommand("evaluate", "FVU, L0, dead features, MMCS, and KL/CE with the reconstruction spliced in",
               "sae.commands:evaluate_command", "sae.settings:EvaluateSettings"),
    Subcommand("export", "export a dictionary in another library's layout",
               "sae.commands:export_command", "sae.settings:ExportSettings"),
    Subcommand("explain", "explain dictionary features and score the explanations (best-of-k, simulation)",
               "explain.commands:explain_command", "explain.settings:ExplainSettings"),
    Subcommand("compare", "mean explanation score per basis per layer with 95 percent CIs",
               "explain.commands:compare_command", "explain.settings:CompareSettings"),
    Subcommand("ioi-layers", "which layer carries the IOI information (whole-vector patches per layer)",
               "causal.layers:ioi_layers_command", "causal.settings:IOILayersSettings"),
    Subcommand("patch-ioi", "IOI feature patching: KL vs number of patched features",
               "causal.commands:patch_ioi_command", "causal.settings:PatchIOISettings"),
    Subcommand("report", "write a static HTML dashboard (index.html) of a run folder",
               "report.commands:report_command", "report.settings:ReportSettings"),
    Subcommand("descriptors", "descriptors for every document (annotation field or LLM), clustered into a vocabulary",
               "explain.descriptors.build:descriptors_command", "explain.descriptors.settings:DescriptorsSettings"),
    Subcommand("probe", "a probe dictionary: one logistic-regression direction per label of an annotation field",
               "explain.descriptors.probe:probe_command", "explain.descriptors.settings:ProbeSettings"),
    Subcommand("describe", "assign descriptors to the features of any dictionary from their top documents; "
               "consistency and precision@K", "explain.descriptors.describe:describe_command",
               "explain.descriptors.settings:DescribeSettings"),
)


def _load(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def build_parser() -> argparse.ArgumentParser:
    from common.options import add_options

    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="<subcommand>")
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        add_options(p, _load(command.settings))
        p.set_defaults(_command=command)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is a complete, fixable one-line answer."""
    from common.errors import UserError

    return (UserError,)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Subcommand = args._command
    try:
        from common.options import from_namespace

        _load(command.run)(from_namespace(_load(command.settings), args))
        sys.stdout.flush()  # here, so that a reader that went away (`hooks | head`) is caught below
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0  # whoever reads the output stopped reading (`| head`): nothing went wrong here
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own flush at exit does not report the broken pipe again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
