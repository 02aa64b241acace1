"""Pictures of training runs: `curves.png` from a run's metrics.jsonl (written at the end of every run), and
`llmtune report`, one self-contained page comparing runs. Matplotlib (Agg backend) is imported only when drawing."""
