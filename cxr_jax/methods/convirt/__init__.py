"""ConVIRT (Zhang et al., MLHC 2022): contrastive image–text pretraining, its evaluation and retrieval."""
