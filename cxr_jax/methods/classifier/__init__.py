"""A normal/abnormal ResNet classifier (optionally on DGM residues), its evaluation and run comparison."""
