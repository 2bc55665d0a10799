"""Retrieval and full-pipeline evaluation: `shelfsight eval`, the conversion gate's figures, calibration, reports."""
