"""Command-line helpers around runs: plots and retrieval grids."""
