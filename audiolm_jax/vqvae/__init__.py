"""The article's VQ-VAE detour: a tiny MLP autoencoder with a 2-D latent on Fashion-MNIST.

* :mod:`audiolm_jax.vqvae.model` -- the autoencoder (optionally with an EMA residual VQ).
* :mod:`audiolm_jax.vqvae.data` -- Fashion-MNIST (TFDS) or a synthetic stand-in, resumable batches.
* :mod:`audiolm_jax.vqvae.task` -- the task the shared train loop runs, plus latent/recon plots.
* :mod:`audiolm_jax.vqvae.run` -- :func:`train_vqvae`, the entry point behind ``train-vqvae``.
"""
