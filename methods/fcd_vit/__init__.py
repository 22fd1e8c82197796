"""Paper B: ViT feature-constrained distillation (Xing et al., J. Software 2023, sections 3.2-3.5)."""
