"""Backbones, tokenizers and the reward model, and the export directory every stage writes."""
