"""bertperf: fast BERT pre-training and fine-tuning."""

__version__ = "0.1.0"
