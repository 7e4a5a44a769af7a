"""Depth LM (configs/lm/depth.py): parameter count of the full config and train-step time of a
variant on this machine.

    python benchmarks/depth_train_step.py [--variant tiny] [--steps 10] [--streams 1]

Parameters: ``jax.eval_shape`` of the full config's init (nothing is allocated). Step time: the
training loop's compiled step (``compile_step``) on one device, random codes, the variant's
batch size and context; the median of ``steps`` timed steps after a warm-up (compile) step.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(variant: str):
    spec = importlib.util.spec_from_file_location("depth_config",
                                                  os.path.join(REPO, "configs/lm/depth.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="tiny")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--streams", type=int, default=1)
    args = p.parse_args(argv)

    import flax.linen as nn
    import jax
    import ml_collections
    import numpy as np

    from audiolm_jax.lm.task import LMTask
    from audiolm_jax.lm.transformer import count_params
    from audiolm_jax.train import mesh as mesh_lib
    from audiolm_jax.train.loop import compile_step, initial_state

    full = LMTask(load_config(""))
    n_full = count_params(jax.eval_shape(full.init_state, jax.random.PRNGKey(0)).params)

    config = load_config(args.variant)
    config.tokens.num_streams = args.streams
    task = LMTask(config)
    batch_size = int(config.train.batch_size)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, int(config.tokens.codebook_size),
                         (batch_size, args.streams, task.num_levels, task.frames_per_example))
    batch = task.prepare_batch({"codes": codes})
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
        state, shardings, _ = initial_state(task, mesh, jax.random.PRNGKey(0))
        step = compile_step(task, shardings, mesh)
        batch = mesh_lib.global_batch(batch, mesh_lib.batch_sharding(mesh))
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(json.dumps({
        "full_config_params": n_full, "variant": args.variant, "streams": args.streams,
        "variant_params": count_params(state.params), "batch": batch_size,
        "steps_per_example": task.context, "rows": task.rows,
        "first_step_s": round(compile_s, 2), "step_s_median": round(step_s, 4),
        "frames_per_s": round(batch_size * task.context / step_s, 1)}))


if __name__ == "__main__":
    main()
