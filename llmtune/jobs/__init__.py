"""One-shot commands that are not training: download, tokenize, init-model, best-of-N, export."""
