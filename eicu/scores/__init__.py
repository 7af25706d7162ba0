"""Early-warning scores."""
