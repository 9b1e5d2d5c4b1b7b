"""Images as sequences: Fashion-MNIST, scikit-learn's digits, CIFAR-10 and image folders."""
