"""Changing a model: pruning, replaying, linear repair, healing, finetuning."""
