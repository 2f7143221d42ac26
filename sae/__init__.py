"""Sparse dictionaries (SAEs and baselines) behind one `Dictionary` interface."""
