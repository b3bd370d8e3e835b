"""The synthetic world's simulation: positions and actions only, no pixels (`lam.data.synth` renders them).

An agent moved by discrete actions and distractors that move on their own, on a
64x64 latent grid, deterministic for a seed.

Actions (`ACTION_NAMES`; `num_actions` in 5..9, the first five always exist)
    0 stay, 1 up (-y), 2 down (+y), 3 left (-x), 4 right (+x),
    5 up-left, 6 up-right, 7 down-left, 8 down-right.
`y` is the latent row (axis H), `x` the latent column (axis W). Like a player holding
a key, the previous action is kept with probability `hold_prob`, otherwise a new one
is drawn uniformly. Walls: an action that would push the agent out of the frame is
never recorded; the sampler redraws uniformly among the actions that keep it inside,
so "right" always means the agent moved `agent_step` pixels right.

Timeline and action semantics (the data contract, docs/design.md)
    z[2k + j] = latents[k, :, j]          the file's latent timeline, length 2 * N
    actions[k, j] = a[t], t = 2k + j     the action held during latent frame t:
                                          agent_pos[t] = agent_pos[t-1] + agent_step * delta(a[t])
**t = 0**: the action is applied *before* the first frame. The world starts one
(unseen) frame earlier, at t = -1, with the agent at `WorldTrajectory.agent_pos_before`
(in bounds); `a[0]` moved it from there to `agent_pos[0]`. So the rule above holds
for every t including 0, and `actions[0, 0]` is an ordinary sampled action (not a
forced "stay"), but there is no frame z[-1] to see it in: evaluation uses t >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_NAMES = ("stay", "up", "down", "left", "right", "up-left", "up-right", "down-left", "down-right")
# (dy, dx) per action, in units of agent_step latent pixels.
ACTION_DELTAS = np.array(
    [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)], dtype=np.int64
)
MIN_ACTIONS, MAX_ACTIONS = 5, len(ACTION_NAMES)

HEIGHT, WIDTH = 64, 64  # the latent grid


def streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for: [0] actions + agent, [1] distractors, [2] background, [3] noise."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


@dataclass
class WorldTrajectory:
    """Ground truth of one simulated video; index 0 of every per-frame array is latent frame t = 0."""

    seed: int
    actions: np.ndarray  # (T,) int64, a[t] moved the agent from t-1 to t
    agent_pos: np.ndarray  # (T, 2) int64, top-left (y, x) of the agent square
    agent_pos_before: np.ndarray  # (2,) int64, the agent at the unseen frame t = -1
    distractor_pos: np.ndarray  # (T, n_distractors, 2) float64, blob centres (y, x)
    num_actions: int
    agent_size: int
    agent_step: int
    distractor_sigma: float
    height: int = HEIGHT
    width: int = WIDTH

    @property
    def n_frames(self) -> int:
        return int(self.actions.shape[0])

    @property
    def agent_center(self) -> np.ndarray:
        """(T, 2) float64 centres (y, x) of the agent square."""
        return self.agent_pos + (self.agent_size - 1) / 2.0

    def displacements(self) -> np.ndarray:
        """(T, 2) agent moves pos[t] - pos[t-1], with pos[-1] = agent_pos_before."""
        prev = np.concatenate([self.agent_pos_before[None], self.agent_pos[:-1]], axis=0)
        return self.agent_pos - prev


def _check_num_actions(num_actions: int) -> None:
    if not MIN_ACTIONS <= num_actions <= MAX_ACTIONS:
        raise ValueError(f"num_actions must be in {MIN_ACTIONS}..{MAX_ACTIONS}, got {num_actions}")


def simulate(
    n_frames: int,
    seed: int,
    *,
    num_actions: int = 5,
    agent_size: int = 8,
    agent_step: int = 4,
    hold_prob: float = 0.75,
    n_distractors: int = 1,
    distractor_sigma: float = 2.5,
    distractor_speed: tuple[float, float] = (1.5, 4.0),
    height: int = HEIGHT,
    width: int = WIDTH,
) -> WorldTrajectory:
    """Simulate `n_frames` latent frames of the world: agent positions, actions, distractors.

    Deterministic for `seed` (and the keyword arguments). See the module docstring for
    the action semantics; every recorded action keeps the agent inside the frame.
    """
    _check_num_actions(num_actions)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not 0.0 <= hold_prob <= 1.0:
        raise ValueError(f"hold_prob must be in [0, 1], got {hold_prob}")
    if agent_size + 2 * agent_step > min(height, width):
        raise ValueError("the frame is too small for the agent to move in both directions")
    rng_agent, rng_dist = streams(seed)[:2]

    # ---- agent: a held-key action process with walls ----
    lo = np.zeros(2, np.int64)
    hi = np.array([height - agent_size, width - agent_size], np.int64)  # inclusive bounds of top-left
    deltas = ACTION_DELTAS[:num_actions] * agent_step  # (A, 2)
    pos = rng_agent.integers(lo, hi + 1)  # the agent at t = -1
    pos_before = pos.copy()
    actions = np.empty(n_frames, np.int64)
    agent_pos = np.empty((n_frames, 2), np.int64)
    prev_action = -1
    for t in range(n_frames):
        hold = rng_agent.random() < hold_prob
        fresh = int(rng_agent.integers(num_actions))
        a = prev_action if (hold and prev_action >= 0) else fresh
        nxt = pos + deltas  # (A, 2): where every action would take the agent
        valid = np.all((nxt >= lo) & (nxt <= hi), axis=1)
        if not valid[a]:  # a wall: redraw among the actions that keep the agent inside
            a = int(rng_agent.choice(np.flatnonzero(valid)))
        pos = nxt[a]
        actions[t], agent_pos[t], prev_action = a, pos, a

    # ---- distractors: bouncing blobs with a random-walk velocity, blind to the actions ----
    margin = 1.6 * distractor_sigma
    dlo = np.array([margin, margin])
    dhi = np.array([height - 1 - margin, width - 1 - margin])
    vmin, vmax = distractor_speed
    dpos = np.empty((n_frames, n_distractors, 2))
    for k in range(n_distractors):
        p = rng_dist.uniform(dlo, dhi)
        angle = rng_dist.uniform(0, 2 * np.pi)
        v = rng_dist.uniform(vmin, vmax) * np.array([np.sin(angle), np.cos(angle)])
        for t in range(n_frames):
            v = v + rng_dist.normal(0.0, 0.5, size=2)
            speed = float(np.hypot(*v))
            v = v * (np.clip(speed, vmin, vmax) / max(speed, 1e-6))
            p = p + v
            for ax in range(2):  # reflect off the walls
                if p[ax] < dlo[ax]:
                    p[ax], v[ax] = 2 * dlo[ax] - p[ax], -v[ax]
                elif p[ax] > dhi[ax]:
                    p[ax], v[ax] = 2 * dhi[ax] - p[ax], -v[ax]
            p = np.clip(p, dlo, dhi)
            dpos[t, k] = p

    return WorldTrajectory(
        seed=int(seed),
        actions=actions,
        agent_pos=agent_pos,
        agent_pos_before=pos_before,
        distractor_pos=dpos,
        num_actions=num_actions,
        agent_size=agent_size,
        agent_step=agent_step,
        distractor_sigma=float(distractor_sigma),
        height=height,
        width=width,
    )
