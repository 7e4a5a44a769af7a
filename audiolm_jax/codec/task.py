"""Codec training as a task for the shared loop: losses, discriminator, balancer, samples.

One compiled step does the generator update (reconstruction losses, commitment loss,
optionally adversarial + feature-matching losses, optionally balanced, optionally semantic
distillation) and, when adversarial training is on, the discriminator update on the same batch.
EMA codebook statistics come back from ``apply(..., mutable=['vq_stats'])`` and are stored in
the state, never written in place.

Semantic distillation (Mimi, ``config.distill``): a learned linear map takes the semantic
level's output to the teacher's dimension, and ``1 - cos`` against the teacher's features,
resampled to the codec frame rate, is added with ``distill.weight``. This loss has no gradient
at the decoder output, where the balancer works, so with the balancer on its gradient is
balanced where it enters the codec, at the semantic level's output: normalised by its own EMA
per-sample norm and given the share ``distill.weight / sum(all weights)``, the other terms
sharing the rest. Without the balancer it is a plain weighted term. Teacher features are
computed on the host in ``prepare_batch`` (a function teacher) or read with the audio
(precomputed).
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from audiolm_jax.codec import losses as losses_lib
from audiolm_jax.codec.model import build_codec
from audiolm_jax.quantization import RNG, STATS, quantizer_config
from audiolm_jax.quantization.init import kmeans_init_state
from audiolm_jax.train.optim import make_optimizer
from audiolm_jax.train.task import Task
from audiolm_jax.workdir import samples_dir

VQ_RNG = RNG


@struct.dataclass
class CodecState:
    step: jnp.ndarray
    params: Any
    vq_stats: Any
    opt_state: Any
    rng: jnp.ndarray
    disc_params: Any = None
    disc_opt_state: Any = None
    balancer_ema: Any = None
    distill_params: Any = None
    distill_opt_state: Any = None


def reconstruction_terms(config: Any, audio: jnp.ndarray, recon: jnp.ndarray) -> dict:
    """Unweighted reconstruction losses whose weight in config.loss is non-zero."""
    lc = config.loss
    terms = {}
    if lc.spectral_weight:
        terms["spectral"] = losses_lib.multiscale_spectral_loss(audio, recon, log=bool(lc.spectral_log))
    if lc.mel_weight:
        terms["mel"] = losses_lib.multiscale_mel_loss(audio, recon, int(config.data.sample_rate))
    if lc.l1_weight:
        terms["l1"] = losses_lib.waveform_l1(audio, recon)
    if lc.mse_weight:
        terms["mse"] = losses_lib.waveform_mse(audio, recon)
    return terms


class CodecTask(Task):
    """Everything codec-specific the generic train loop needs."""

    name = "codec"
    program = "codec_train"
    inference_keys = ("params", STATS)  # the codebooks live in the EMA statistics

    def __init__(self, config: Any, eval_audio: np.ndarray | None = None):
        super().__init__(config)
        self.model = build_codec(config)
        # EMA codebook statistics (and their first-batch k-means) only for quantizers that
        # keep them; FSQ's state carries an empty ``vq_stats``.
        self.has_stats = quantizer_config(config.quantizer).has_stats
        self.optimizer, self.schedule = make_optimizer(config.optim, int(config.train.num_steps))
        self.adversarial = bool(config.adversarial.enabled)
        self.eval_audio = eval_audio
        if self.adversarial:
            from audiolm_jax.codec.discriminator import MultiScaleSTFTDiscriminator

            a = config.adversarial
            self.discriminator = MultiScaleSTFTDiscriminator(
                filters=int(a.filters), n_ffts=tuple(a.n_ffts), hop_lengths=tuple(a.hop_lengths),
                win_lengths=tuple(a.n_ffts))
            self.disc_optimizer = optax.adam(float(a.learning_rate), b1=float(a.b1), b2=float(a.b2))
        self.distill = config.get("distill", None)
        self.distilling = bool(self.distill is not None and self.distill.enabled)
        self._teacher = None
        if self.distilling:
            self.distill_head = nn.Dense(int(self.distill.teacher_dim), use_bias=False,
                                         name="distill_head")
        self._recon = jax.jit(self._reconstruct)

    # ---------------------------------------------------------------- state
    def _dummy_audio(self) -> jnp.ndarray:
        from audiolm_jax.codec.model import hop_length

        length = max(hop_length(self.config) * 8, 4096)
        return jnp.zeros((1, length), jnp.float32)

    def init_state(self, rng: jax.Array) -> CodecState:
        k_params, k_vq, k_disc, k_state = jax.random.split(rng, 4)
        dummy = self._dummy_audio()
        variables = self.model.init({"params": k_params, VQ_RNG: k_vq}, dummy, train=False)
        params = variables["params"]
        state = CodecState(
            step=jnp.zeros((), jnp.int32), params=params, vq_stats=variables.get(STATS, {}),
            opt_state=self.optimizer.init(nn.meta.unbox(params)), rng=k_state)
        if self.adversarial:
            disc_params = self.discriminator.init(k_disc, dummy)["params"]
            state = state.replace(disc_params=disc_params,
                                  disc_opt_state=self.disc_optimizer.init(disc_params))
        if self.config.loss.balancer:
            state = state.replace(balancer_ema={k: jnp.zeros((), jnp.float32)
                                                for k in self._balanced_names()})
        if self.distilling:
            semantic = jax.eval_shape(
                lambda v: self.model.apply(v, dummy, train=False).get("semantic_quantized"),
                variables)
            if semantic is None:
                raise ValueError("config key 'distill.enabled': distillation needs a semantic "
                                 "level (quantizer.kind='split_rvq')")
            head = self.distill_head.init(jax.random.fold_in(k_state, 7),
                                          jnp.zeros(semantic.shape, jnp.float32))["params"]
            state = state.replace(distill_params=head, distill_opt_state=self.optimizer.init(head))
        return state

    def _balanced_names(self) -> list[str]:
        names = list(reconstruction_terms(self.config, jnp.zeros((1, 4096)), jnp.zeros((1, 4096))))
        if self.adversarial:
            names += ["adv", "feat"]
        if self.distilling:
            names += ["distill"]
        return names

    def prepare_batch(self, host_batch: Any) -> dict:
        audio = np.asarray(host_batch["audio"], np.float32)
        if not self.distilling:
            return {"audio": audio}
        return {"audio": audio, "teacher": self.teacher_features(host_batch)}

    def teacher_features(self, host_batch: Any) -> np.ndarray:
        """[B, frames, teacher_dim] at the teacher's rate: read with the audio or computed."""
        from audiolm_jax.codec import teachers

        d = self.distill
        audio = np.asarray(host_batch["audio"], np.float32)
        if d.teacher == "precomputed":
            if "features" not in host_batch:
                raise ValueError("config key 'distill.teacher' is 'precomputed' but the batches "
                                 "carry no features (build the iterator with "
                                 "codec.data.make_train_iterator)")
            return teachers.check_features(host_batch["features"], audio.shape[0],
                                           int(d.teacher_dim), "the precomputed features")
        if self._teacher is None:
            self._teacher = teachers.make_teacher(d)
        feats = self._teacher(audio, int(self.config.data.sample_rate))
        return teachers.check_features(feats, audio.shape[0], int(d.teacher_dim),
                                       f"teacher {d.function}")

    def _teacher_at_codec_rate(self, teacher: jnp.ndarray, num_samples: int,
                               codec_frames: int) -> jnp.ndarray:
        """Resamples [B, F, D] teacher frames to the codec's frames (static shapes, so the map
        is a constant of the compiled step)."""
        from audiolm_jax.codec.model import hop_length

        sr = float(self.config.data.sample_rate)
        teacher_rate = float(self.distill.feature_rate) or teacher.shape[1] * sr / num_samples
        hop = hop_length(self.config)
        if -(-num_samples // hop) != codec_frames:  # a model hop_length() does not describe
            hop = num_samples / codec_frames
        matrix = losses_lib.feature_resampling_matrix(teacher.shape[1], teacher_rate,
                                                      codec_frames, sr / hop)
        return jnp.einsum("nf,bfd->bnd", jnp.asarray(matrix), teacher.astype(jnp.float32))

    def _distill_terms(self, distill_params, semantic, teacher):
        """Unweighted cosine distance of the projected semantic output; aux: the cosine."""
        student = self.distill_head.apply({"params": distill_params}, semantic.astype(jnp.float32))
        return losses_lib.cosine_distillation_loss(student, teacher)

    # ---------------------------------------------------------------- step
    def _term_weights(self, step: jnp.ndarray) -> dict:
        lc, a = self.config.loss, self.config.adversarial
        w = {"spectral": lc.spectral_weight, "mel": lc.mel_weight, "l1": lc.l1_weight,
             "mse": lc.mse_weight}
        w = {k: jnp.float32(v) for k, v in w.items() if v}
        if self.adversarial:
            on = (step >= int(a.start_step)).astype(jnp.float32)
            w["adv"] = on * float(a.adv_weight)
            w["feat"] = on * float(a.feat_weight)
        return w

    def _generator_terms(self, disc_params, audio, recon) -> dict:
        terms = reconstruction_terms(self.config, audio, recon)
        if self.adversarial:
            from audiolm_jax.codec import discriminator as d

            real_logits, real_feats = self.discriminator.apply({"params": disc_params}, audio)
            fake_logits, fake_feats = self.discriminator.apply({"params": disc_params}, recon)
            real_feats = jax.lax.stop_gradient(real_feats)
            terms["adv"] = d.hinge_generator_loss(fake_logits)
            terms["feat"] = d.feature_matching_loss(real_feats, fake_feats)
        return terms

    def init_step(self, state: CodecState, batch: dict) -> CodecState:
        """k-means codebook init on the first batch (all devices' vectors), before step 1."""
        if not self.has_stats:
            return state
        return kmeans_init_state(self.model, state, batch["audio"])

    def train_step(self, state: CodecState, batch: dict) -> tuple[CodecState, dict]:
        audio = batch["audio"]
        rng, k_vq = jax.random.split(state.rng)

        def generator(params):
            out, mutated = self.model.apply(
                {"params": params, STATS: state.vq_stats}, audio, train=True,
                init_codebooks=False, rngs={VQ_RNG: k_vq},
                mutable=[STATS] if self.has_stats else [])
            primals = (out["recon"], out["commit_loss"])
            if self.distilling:
                primals += (out["semantic_quantized"],)
            return primals, (out, mutated.get(STATS, state.vq_stats))

        primals, gen_vjp, (out, new_stats) = jax.vjp(generator, state.params, has_aux=True)
        recon, commit = primals[:2]
        terms, terms_vjp = jax.vjp(lambda r: self._generator_terms(state.disc_params, audio, r), recon)
        weights = self._term_weights(state.step)
        metrics = {}
        distill_updates = {}
        if self.distilling:
            semantic = primals[2]
            teacher = self._teacher_at_codec_rate(batch["teacher"], audio.shape[-1],
                                                  semantic.shape[1])
            (d_loss, d_cos), (g_semantic, g_head) = jax.value_and_grad(
                self._distill_terms, argnums=(1, 0), has_aux=True)(
                    state.distill_params, semantic, teacher)
            d_weight = jnp.float32(self.distill.weight)
            # The head learns from the unweighted loss: with weight 0 it is a linear probe of
            # how much of the teacher the semantic level carries without being distilled.
            head_updates, head_opt = self.optimizer.update(g_head, state.distill_opt_state,
                                                           state.distill_params)
            distill_updates = dict(
                distill_params=optax.apply_updates(state.distill_params, head_updates),
                distill_opt_state=head_opt)
            metrics.update({"distill_loss": d_loss, "distill_cosine": d_cos})
        balancer_ema = state.balancer_ema
        if self.config.loss.balancer:
            from audiolm_jax.codec.balancer import balance_gradients

            unit = {k: jnp.zeros_like(v) for k, v in terms.items()}
            grads = {k: terms_vjp({**unit, k: jnp.ones_like(terms[k])})[0] for k in terms}
            decay = float(self.config.loss.balancer_decay)
            recon_share, ema = 1.0, dict(state.balancer_ema)
            if self.distilling:
                # One balancer over two outputs: the distillation gradient, at the semantic
                # output, gets the share distill.weight / (all weights) of the unit total,
                # so its weight compares directly with adv_weight, feat_weight, ...
                all_w = jnp.maximum(sum(weights.values()) + d_weight, 1e-12)
                recon_share = sum(weights.values()) / all_w
                g_semantic, d_ema, distill_balance = balance_gradients(
                    {"distill": g_semantic}, {"distill": d_weight},
                    {"distill": ema.pop("distill")}, ema_decay=decay,
                    total_norm=d_weight / all_w)
                metrics.update({f"balancer/{k}": v for k, v in distill_balance.items()})
            g_recon, ema, bal_metrics = balance_gradients(
                grads, weights, ema, ema_decay=decay, total_norm=recon_share)
            balancer_ema = {**ema, **d_ema} if self.distilling else ema
            metrics.update({f"balancer/{k}": v for k, v in bal_metrics.items()})
        else:
            g_recon = terms_vjp({k: weights[k].astype(v.dtype) for k, v in terms.items()})[0]
            if self.distilling:
                g_semantic = d_weight * g_semantic
        commit_w = jnp.asarray(self.config.loss.commit_weight, commit.dtype)
        cotangents = (g_recon, commit_w)
        if self.distilling:
            cotangents += (g_semantic.astype(semantic.dtype),)
        (grads,) = gen_vjp(cotangents)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        total = commit_w * commit + sum(weights[k] * v for k, v in terms.items())
        if self.distilling:
            total = total + d_weight * d_loss
        metrics.update({
            "loss": total, "commit_loss": commit, "grad_norm": optax.global_norm(grads),
            "learning_rate": self.schedule(state.step),
            **{f"loss/{k}": v for k, v in terms.items()},
        })
        for name in ("usage", "perplexity", "codes_reset", "bypass_frac"):
            if name in out.get("metrics", {}):
                metrics[f"vq/{name}"] = out["metrics"][name]

        new_state = state.replace(step=state.step + 1, params=params, vq_stats=new_stats,
                                  opt_state=opt_state, rng=rng, balancer_ema=balancer_ema,
                                  **distill_updates)
        if self.adversarial:
            new_state, d_metrics = self._discriminator_update(new_state, state.disc_params, audio,
                                                              jax.lax.stop_gradient(recon))
            metrics.update(d_metrics)
        return new_state, metrics

    def _discriminator_update(self, state: CodecState, disc_params, audio, recon):
        from audiolm_jax.codec import discriminator as d

        def d_loss(dp):
            real_logits, _ = self.discriminator.apply({"params": dp}, audio)
            fake_logits, _ = self.discriminator.apply({"params": dp}, recon)
            return d.hinge_discriminator_loss(real_logits, fake_logits)

        loss, grads = jax.value_and_grad(d_loss)(disc_params)
        on = state.step > int(self.config.adversarial.start_step)
        updates, opt_state = self.disc_optimizer.update(grads, state.disc_opt_state, disc_params)
        updates = jax.tree.map(lambda u: jnp.where(on, u, 0.0), updates)
        return (state.replace(disc_params=optax.apply_updates(disc_params, updates),
                              disc_opt_state=opt_state),
                {"disc/loss": loss})

    # ---------------------------------------------------------------- samples
    def _reconstruct(self, params, vq_stats, audio):
        return self.model.apply({"params": params, STATS: vq_stats}, audio, train=False)["recon"]

    def reconstruct(self, state: CodecState, audio: np.ndarray) -> np.ndarray:
        return np.asarray(self._recon(state.params, state.vq_stats, jnp.asarray(audio, jnp.float32)))

    def write_samples(self, state: CodecState, step: int, workdir: str, writer) -> None:
        """Reconstruction WAVs and spectrogram PNGs of the held-out clips (process 0 only)."""
        if self.eval_audio is None or jax.process_index() != 0:
            return
        from audiolm_jax.data.audio_io import save_wav
        from audiolm_jax.train.writers import save_spectrogram_png

        sr = int(self.config.data.sample_rate)
        clips = self.eval_audio[:2]
        recon = self.reconstruct(state, clips)
        outdir = samples_dir(workdir, step)
        os.makedirs(outdir, exist_ok=True)
        for i, (orig, rec) in enumerate(zip(clips, recon)):
            save_wav(os.path.join(outdir, f"clip{i}_original.wav"), orig, sr)
            save_wav(os.path.join(outdir, f"clip{i}_reconstruction.wav"), rec, sr)
            png = save_spectrogram_png(os.path.join(outdir, f"clip{i}_spectrogram.png"),
                                       {"original": orig, "reconstruction": rec}, sr)
            writer.audio(step, f"samples/clip{i}_reconstruction", rec, sr)
            writer.image(step, f"samples/clip{i}_spectrogram", png)
