"""Command-line helpers around runs: reports, sweeps, plots, retrieval grids, and putting a trained model to use
(index, search, export)."""
