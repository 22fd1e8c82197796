"""EfficientAD (Batzner et al., WACV 2024) and paper A's dual-autoencoder extensions."""
