"""Paper B backbone ablation (section 4.3, Figs 3 and 5): MKDAD multi-layer CNN distillation +/- L_anchor
(presets ``mkdad`` and ``same_arch``)."""
