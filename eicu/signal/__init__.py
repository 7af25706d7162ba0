"""Per-bed streaming signal processing that drives the kernels."""
