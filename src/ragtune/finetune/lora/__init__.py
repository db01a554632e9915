"""The LoRA pipeline: configuration, training runs, progress and base-vs-tuned evaluation."""
