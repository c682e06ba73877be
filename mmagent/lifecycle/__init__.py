"""What happens to a run after training: drift watch (and, on other branches, updates and promotion)."""
