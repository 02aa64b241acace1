"""A trained model at work: loading for inference (a model, run dir or adapter), decoding, chat, prompt
files, and scoring with a reward model."""
