"""DGM (Tang et al., MedIA 2021): disentangled normal synthesis, disease residue and saliency."""
