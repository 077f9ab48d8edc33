"""Evaluation of trained models: perplexity by length, synthetic length-generalization tasks."""
