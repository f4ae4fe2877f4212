"""Training and evaluation data: samples and LR making (`samples`), degradations (`degrade`)."""
