"""Distances and retrieval metrics for deep metric learning."""
