"""Training jobs: the single run entry (run), the run directory, sealed checkpoints, callbacks, and
multi-process launching with accelerate configs (the only package that knows about `accelerate launch`)."""
