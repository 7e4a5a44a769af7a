"""Conversations in slots (:mod:`audiolm_jax.moshi.slots`, a server's sessions): each slot's
frames equal its conversation alone, whenever it joins, however long it pauses, whatever the
other slots' sampling settings, with one compiled program throughout; and the traced sampler
keeps :func:`sample_token`'s distribution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiolm_jax.moshi import MoshiConfig
from audiolm_jax.moshi.generate import Sampling, generate, sample_token_traced
from audiolm_jax.moshi.slots import MoshiSlots, _compiled
from test_moshi_generate import _random_params, _user

HOT = Sampling(True, 2.0, 0, 2.0, 0)


def _drive(slots: MoshiSlots, user, conversations, steps: int):
    """``conversations``: {id: (slot, join step, paused steps, sampling, seed)}; conversation
    c hears ``user[c]`` frame by frame while active. -> {id: frames [1 + dep_q, T]}."""
    fed = dict.fromkeys(conversations, 0)
    got = {c: [] for c in conversations}
    for t in range(steps):
        codes = np.zeros((slots.slots, user.shape[1]), np.int32)
        active = np.zeros(slots.slots, bool)
        owner = {}
        for c, (slot, join, paused, sampling, seed) in conversations.items():
            if t == join:
                slots.join(slot, sampling, seed)
            if t >= join and t not in paused and (slot not in owner) and fed[c] < user.shape[2]:
                if any(j > join and j <= t for cc, (sl, j, *_) in conversations.items()
                       if sl == slot and cc != c):
                    continue  # a later conversation took the slot over
                codes[slot], active[slot], owner[slot] = user[c, :, fed[c]], True, c
                fed[c] += 1
        out, valid = slots.step(codes, active)
        for slot, c in owner.items():
            if valid[slot]:
                got[c].append(out[slot])
    return {c: np.stack(v, axis=-1) if v else None for c, v in got.items()}


GREEDY = Sampling(sampling=False)


@pytest.mark.parametrize("context", [8, None], ids=["ring", "unbounded"])
def test_slots_join_pause_and_equal_their_conversations_alone(context):
    """Conversation 0 in slot 0 from step 0, conversation 2 taking that slot over at step 12
    (past the 8-frame window); conversation 1 joins slot 2 at step 5 and pauses for steps
    9-12. Greedy, each equals ``generate`` on it alone, while slot 1 samples hot all along;
    one compiled step throughout."""
    cfg = MoshiConfig.tiny(context=context)
    params = _random_params(cfg)
    user = _user(cfg, 4, 20, seed=5)
    max_steps = None if context else 40
    slots = MoshiSlots(cfg, params, slots=3, max_steps=max_steps)
    conversations = {0: (0, 0, (), GREEDY, 0), 1: (2, 5, range(9, 13), GREEDY, 0),
                     2: (0, 12, (), GREEDY, 0), 3: (1, 0, (), HOT, 3)}
    got = _drive(slots, user, conversations, 20)
    kwargs = {"max_steps": max_steps} if max_steps else {}
    for c, frames in ((0, 12), (1, 11), (2, 8)):
        alone = generate(cfg, params, user[c:c + 1, :, :frames], **kwargs)[0]
        np.testing.assert_array_equal(got[c], alone)
    assert _compiled(cfg, max_steps)[0]._cache_size() == 1


def test_a_sampled_slot_does_not_depend_on_the_others():
    """Hot sampling with a seed: the same conversation gives the same frames in a slot of a
    busy 3-slot step (others greedy or sampled with other seeds) as in a 1-slot step."""
    cfg = MoshiConfig.tiny()
    params = _random_params(cfg, seed=1)
    user = _user(cfg, 3, 14, seed=2)
    busy = _drive(MoshiSlots(cfg, params, slots=3), user,
                  {0: (1, 2, (6,), HOT, 11), 1: (0, 0, (), HOT, 12), 2: (2, 1, (), GREEDY, 0)},
                  14)
    alone = _drive(MoshiSlots(cfg, params, slots=1), user, {0: (0, 0, (), HOT, 11)}, 14)
    n = min(busy[0].shape[1], alone[0].shape[1])
    assert n >= 10
    np.testing.assert_array_equal(busy[0][:, :n], alone[0][:, :n])
    other = _drive(MoshiSlots(cfg, params, slots=1), user, {0: (0, 0, (), HOT, 12)}, 14)
    assert (other[0][:, :n] != alone[0][:, :n]).any()  # the seed matters


def test_traced_sampler_keeps_top_k_and_temperature():
    logits = jnp.broadcast_to(jnp.arange(10.0), (4000, 10))
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draw = jax.vmap(sample_token_traced, in_axes=(0, 0, None, None))
    draws = np.asarray(draw(keys, logits, 1.0, 3))
    assert set(np.unique(draws)) == {7, 8, 9}
    assert abs((draws == 9).mean() - 0.665) < 0.03  # e^2 / (1 + e + e^2)
    assert (np.asarray(draw(keys, logits, 1.0, 0)) < 7).mean() > 0.01  # no cut
    np.testing.assert_array_equal(draw(keys, logits, 0.0, 3), 9)  # greedy
    assert (np.asarray(draw(keys, logits, 0.05, 0)) == 9).mean() > 0.99
