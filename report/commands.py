"""Entry points of `cli.py report` and `cli.py demo` (keyword names = the parsers' dest names)."""

from __future__ import annotations

from pathlib import Path


def report_command(run: str, out: str | None = None) -> Path:
    from report.build import build_report
    from report.layout import REPORT_DIR

    index = build_report(run, out if out else Path(run) / REPORT_DIR)
    print(f"report: {index.resolve()}")
    return index


def demo_command(out: str = "runs/demo", llm: str = "local:default", base_url: str | None = None,
                 device: str = "cpu") -> Path:
    from report.demo import run_demo, settings_from_kwargs

    return run_demo(settings_from_kwargs(llm=llm, base_url=base_url, device=device), out)
