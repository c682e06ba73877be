"""The life of a model after training: registry, comparison, promotion, updates."""
