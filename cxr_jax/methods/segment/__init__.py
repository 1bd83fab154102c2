"""Supervised structure segmentation on the U-Net (e.g. lungs), its evaluation and the predictor."""
