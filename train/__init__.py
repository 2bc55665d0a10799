"""shelfsight workstation side: pretrained backbone import, metric-learning training."""
