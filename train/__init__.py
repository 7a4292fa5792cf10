"""PyTorch training of the MNIST MLP (needs the [train] extra)."""
