"""Using a trained model: perplexity and bits per byte (evaluate), text generation (generate)."""
