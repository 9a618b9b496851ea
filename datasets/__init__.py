"""Data sources, networks and denoiser adapters: mixtures, MNIST, CIFAR-10, Stable Diffusion, prompt sets (`negguide.datasets`)."""
