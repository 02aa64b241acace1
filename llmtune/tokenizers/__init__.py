"""Tokenizers of our own: training a byte-level BPE with the ChatML special tokens and template, offline."""
