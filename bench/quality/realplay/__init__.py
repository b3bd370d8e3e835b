"""Real rendered play as VVAE-shaped latents: data to measure latent actions on, with the true actions kept.

The synthetic world (`lam synth`) proves the machinery; this package records random play in
real environments that install from the package index with their assets, turns the frames
into latents with a fixed encoder and writes files the product reads (`lam validate`,
`lam manifest`, `lam train`, `lam eval`):

    python -m bench.quality.realplay --env all --episodes 16 --chunks 64 --seed 0 --out realplay_data
    lam train --recipe demo --data_dir realplay_data/crafter --manifest_path realplay_data/crafter/manifest.json
    lam eval --checkpoint runs/RUN/checkpoint_epoch0010 --data_dir realplay_data/crafter --split test

Environments (one module each; the module docstring says what the actions are and why):
    minigrid   MiniGrid FourRooms, top-down grid world           turn-left, turn-right, forward
    crafter    Crafter, 2D world under a following camera         noop, left, right, up, down, do
    vizdoom    ViZDoom on Freedoom levels, first-person 3D        turn-left, turn-right, forward, backward
    miniwob    MiniWoB++ terminal page in headless Chromium (GUI) pointer up/down/left/right, click, type
    desktop    Debian desktop applications under Xvfb (GUI:      pointer up/down/left/right, click, drag,
               Mousepad, PCManFM, Gnumeric, xterm; Openbox)       scroll up/down, type, select-all, switch
Install: `pip install -e '.[bench]'`, for miniwob Debian's `chromium` and `chromium-driver`, for
desktop Debian's `xvfb openbox mousepad pcmanfm gnumeric xterm` (`scripts/setup.sh` does all of it
where it can).

Modules: `encoder` (frames -> latents, the exact recipe), `base` (the environment interface and
list), `generate` (the player, the files, the manifest), `__main__` (the command line).
"""
