"""llmtune: fine-tune language models from one command line, on Hugging Face libraries."""

__version__ = "0.1.0"
