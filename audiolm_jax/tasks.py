"""The kinds of model by name (a config's ``task``, a workdir's kind): name -> Task class.

The registry sits above the generic code that serves every kind (:mod:`audiolm_jax.export`)
and is passed to it, so that code never imports a kind. A new kind of model is one Task
subclass and one line here.
"""

from __future__ import annotations

from audiolm_jax.codec.task import CodecTask
from audiolm_jax.lm.task import LMTask
from audiolm_jax.moshi.task import MoshiTask
from audiolm_jax.vqvae.task import VQVAETask

TASKS = {task.name: task for task in (CodecTask, LMTask, MoshiTask, VQVAETask)}
