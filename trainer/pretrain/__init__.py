"""Pretraining: `job` (MultiMAE as a job of the engine's loop, its figures and timm export) and
`reconstruct` (`mmforge reconstruct`: what a checkpoint predicts from a masked input).
"""
