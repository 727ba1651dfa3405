"""Losses: the triplet loss, its negative samplers, and the MDR regulariser."""
