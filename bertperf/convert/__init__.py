"""Checkpoint conversion: HuggingFace directories (`hf`)."""
