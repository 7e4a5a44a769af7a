"""The article's VQ-VAE detour: an MLP autoencoder with a 2-D latent on Fashion-MNIST classes
0-2 (t-shirt/top, trouser, pullover), quantized by a 2-level EMA residual VQ.

    audiolm-jax train-vqvae --config=configs/vqvae_fashion_mnist.py --workdir=DIR

Variants: ``--config.model.quantize=False`` (plain autoencoder),
``--config.quantizer.num_levels=1`` (single VQ), ``--config.data.dataset=synthetic``
(no download).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "vqvae"
    # Encoder 784 -> 512 -> 256 -> 64 -> 2 (4 Dense layers); the decoder mirrors it.
    c.model = ml_collections.ConfigDict(dict(
        hidden=(512, 256, 64), latent_dim=2, activation="relu", output_activation="sigmoid",
        image_shape=(28, 28), quantize=True))
    c.quantizer = ml_collections.ConfigDict(dict(
        kind="rvq", num_levels=2, num_semantic_levels=0, codebook_size=32, codebook_dim=0,
        decay=0.99, epsilon=1e-5, kmeans_iters=50, dead_code_threshold=2.0,
        dead_code_mode="absolute", dead_code_interval=1, dropout=False, dropout_mode="batch",
        no_quant_rate=0.0))
    c.loss = ml_collections.ConfigDict(dict(commit_weight=0.25))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=200, schedule="cosine",
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
    c.data = ml_collections.ConfigDict(dict(
        dataset="fashion_mnist", classes=(0, 1, 2), data_dir="", train_split="train",
        eval_split="test", max_train_examples=0, num_eval=1500, num_show=10,
        synthetic_examples=3000))
    c.train = ml_collections.ConfigDict(dict(
        name="vqvae_fashion_mnist", num_steps=5000, batch_size=256, seed=0,
        checkpoint_every=1000, log_every=50, sample_every=1000, keep_checkpoints=3,
        async_checkpoints=True, progress=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
