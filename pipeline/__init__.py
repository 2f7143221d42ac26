"""Orchestration: `cli.py demo` runs every stage, corpus to dashboard, in one resumable run folder.

Sits above every stage package (it calls activations, sae, explain, causal
and report through their settings dataclasses, as the command line does);
nothing below imports it. Nothing heavy is imported here; see `pipeline.demo`.
"""
