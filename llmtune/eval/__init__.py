"""`llmtune eval`: the job (data, models, table, JSON), the measurements (perplexity, bits per byte,
rewards, DPO accuracy, generation metrics) and the shipped metric scripts."""
