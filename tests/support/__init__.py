"""Helpers shared by several test modules (no fixtures: those are in tests/conftest.py).

Test modules import these by name (`from tests.support.report_run import make_run`); no test module imports
from another test module.
"""
