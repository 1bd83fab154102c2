"""LD (Chen et al., TPAMI 2023): local discrimination, pixel embeddings, one-shot landmarks, shape prior."""
