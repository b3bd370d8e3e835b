"""Tile a file's transitions with windows that share one frame, so each is counted exactly once.

A file of n latent frames has the transitions z[t-1] -> z[t] for t = 1..n-1. Windows of
T frames start at 0, T-1, 2(T-1), ...: consecutive windows share one frame, so each
transition falls in exactly one window. When n - 1 is not a multiple of T - 1 the last
window is moved back to end at frame n - 1 and keeps only the transitions not covered
yet (`first_t` says where they start). A file shorter than T is one window of its own
length. `lam eval` scores and `lam export-actions` labels every transition this way.
"""

from __future__ import annotations


def transition_windows(n_frames: int, T: int) -> list[tuple[int, int, int]]:
    """(start, length, first_t) windows whose transitions `first_t .. start+length-1` tile 1..n_frames-1."""
    if n_frames < 2:
        return []
    if n_frames <= T:
        return [(0, n_frames, 1)]
    windows, start = [], 0
    while start + T <= n_frames:
        windows.append((start, T, start + 1))
        start += T - 1
    covered = windows[-1][0] + T - 1  # last transition covered so far
    if covered < n_frames - 1:
        windows.append((n_frames - T, T, covered + 1))
    return windows
