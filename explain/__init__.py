"""Explain-simulate-score of dictionary features, and cheaper scorers."""
