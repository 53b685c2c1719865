"""Fine-tuning: examples -> model inputs (encode), model outputs -> predictions and scores (evaluate),
and the run that trains, selects and exports the best model (run)."""
