"""Datasets: Fashion-MNIST, the FMNIST-Scenes generator, and layout checks for user copies."""
