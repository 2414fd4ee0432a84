"""Per-user adaptation: few-shot splits for new users, fine-tuning within a device's plan,
and per-user summaries with bootstrap confidence intervals."""
