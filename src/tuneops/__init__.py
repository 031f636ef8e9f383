"""tuneops: the governed fine-tuning lifecycle."""
__version__ = "0.1.0"
