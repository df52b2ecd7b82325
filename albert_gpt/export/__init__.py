"""Trained runs in other tools' formats: a Hugging Face transformers model folder (`hf_export`)."""
