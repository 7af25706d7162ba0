"""Bedside monitor simulators: synthetic scenarios and replay of real WFDB records."""
