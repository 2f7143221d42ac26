"""Causal checks: IOI feature patching with KL divergence."""
