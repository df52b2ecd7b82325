"""The files copied into an exported Hugging Face model folder (trust_remote_code); they import only
torch and transformers, never albert_gpt."""
