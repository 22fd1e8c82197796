"""Paper B backbone ablation (section 4.3, Figs 3 and 5): MKDAD-style multi-layer CNN distillation +/- L_anchor."""
