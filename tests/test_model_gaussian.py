"""The gaussian bottleneck: noise in training only, the prior term, k-means ids, the same
centroids on every rank, and the vectors in the export."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import recipe_parts, run_two_ranks, small_model_config, tiny_config

from lam.model import LatentActionModel
from lam.model.quantize import GaussianBottleneck

CENTRES = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])


def blobs(n_per: int, seed: int = 0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3 * n_per, K=1, D=2) vectors around CENTRES (+ shift), and which blob each came from."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per)
    z = CENTRES[labels] + shift + 0.3 * torch.randn(len(labels), 2, generator=g)
    return z[:, None], labels


def test_noise_only_in_training_and_the_prior_term():
    q = GaussianBottleneck(num_codes=2, num_embeddings=4, code_dim=3, noise_std=0.5, kl_weight=0.0).train()
    z = torch.randn(2000, 2, 3)
    torch.manual_seed(0)
    out = q(z)
    noise = out.quantized - z
    assert 0.45 < float(noise.std()) < 0.55 and abs(float(noise.mean())) < 0.05
    assert out.loss is None  # kl_weight 0: nothing joins the loss...
    torch.testing.assert_close(out.losses["kl_loss"], 0.5 * z.pow(2).mean())  # ...but the term is reported
    q.eval()
    torch.testing.assert_close(q(z).quantized, z)  # evaluation: the vector itself

    weighted = GaussianBottleneck(num_codes=2, num_embeddings=4, code_dim=3, kl_weight=0.1).train()
    out = weighted(z.requires_grad_())
    torch.testing.assert_close(out.loss, 0.1 * 0.5 * z.pow(2).mean())
    out.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_ids_come_from_kmeans_fitted_on_remembered_vectors():
    q = GaussianBottleneck(num_codes=1, num_embeddings=3, code_dim=2, kmeans_samples=512)
    z, labels = blobs(100)
    assert q.nearest(z).unique().tolist() == [0]  # before the first fit every id is 0
    q.remember(z)
    assert q.fit_centroids() and bool(q.fitted) and int(q.fits) == 1
    ids = q.nearest(z)[:, 0]
    # each blob is one id, and the three ids differ
    assert all(len(ids[labels == b].unique()) == 1 for b in range(3)) and len(ids.unique()) == 3
    # lookup returns the centroids, near the blob centres
    for b in range(3):
        centre = q.lookup(ids[labels == b][:1, None])[0, 0]
        assert torch.dist(centre, CENTRES[b]) < 0.2
    # the fit emptied the buffer: a second fit without new vectors does nothing
    before = q.centroids.clone()
    assert not q.fit_centroids() and torch.equal(q.centroids, before)


def test_the_buffer_keeps_the_latest_vectors():
    q = GaussianBottleneck(num_codes=1, num_embeddings=3, code_dim=2, kmeans_samples=150)
    old, _ = blobs(100, seed=1, shift=50.0)  # far away: must not survive in the buffer
    new, _ = blobs(50, seed=2)
    q.remember(old)
    q.remember(new[:70])
    q.remember(new[70:])
    assert int(q.recent_count) == 150
    assert q.fit_centroids()
    assert q.centroids.abs().max() < 10  # only the 150 latest vectors (all of `new`) were used


def test_the_real_recipes_model_is_one_graph_and_remembers_under_compile():
    """Nothing in a training forward breaks torch.compile's graph (the ring of remembered vectors
    lives in device buffers, not in Python), and compiled, it remembers what eager does."""
    import torch._dynamo as dynamo

    cfg = small_model_config(**recipe_parts("real"), num_codes=1, codebook_dim=2, num_embeddings=3, kmeans_samples=6)
    x = torch.randn(2, 3, 4, 16, 16)
    torch.manual_seed(0)
    eager, compiled = LatentActionModel(cfg).train(), LatentActionModel(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    assert dynamo.explain(LatentActionModel(cfg).train())(x).graph_break_count == 0
    step = torch.compile(compiled, backend="aot_eager")
    for _ in range(2):  # 4 vectors a forward into a ring of 6: the second wraps around
        torch.manual_seed(1)
        eager(x)
        torch.manual_seed(1)
        step(x)
    for model in (eager, compiled):
        assert int(model.quantizer.recent_count) == 6 and int(model.quantizer.next_row) == 2
    torch.testing.assert_close(compiled.quantizer.recent, eager.quantizer.recent)


def test_centroids_are_in_the_checkpoint():
    cfg = small_model_config(quantizer="gaussian", num_codes=1, codebook_dim=2, num_embeddings=3)
    model = LatentActionModel(cfg)
    z, _ = blobs(50)
    model.quantizer.remember(z)
    model.after_epoch()
    state = model.state_dict()
    assert {"quantizer.centroids", "quantizer.fitted", "quantizer.fits"} <= set(state)
    assert "quantizer.recent" not in state  # per rank, per epoch: not saved
    reloaded = LatentActionModel(cfg)
    reloaded.load_state_dict(state)
    assert torch.equal(reloaded.quantizer.nearest(z), model.quantizer.nearest(z))


def test_too_few_vectors_leave_the_centroids_alone():
    q = GaussianBottleneck(num_codes=1, num_embeddings=5, code_dim=2)
    q.remember(torch.randn(4, 1, 2))
    assert not q.fit_centroids() and not bool(q.fitted)


def test_config_checks():
    for bad in ({"noise_std": -1.0}, {"kl_weight": -0.1}, {"kmeans_samples": 2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            small_model_config(quantizer="gaussian", num_embeddings=5, **bad)


# ----------------------------------------------------------------------------- 2-process gloo group


def _rank(rank: int) -> dict:
    z, _ = blobs(60, seed=10 + rank)
    q = GaussianBottleneck(num_codes=1, num_embeddings=3, code_dim=2, kmeans_samples=256)
    q.remember(z[rank * 90 : (rank + 1) * 90] if rank == 0 else z)  # different data, and different amounts
    fitted = q.fit_centroids()
    return {"fitted": fitted, "centroids": q.centroids.clone(), "fits": int(q.fits)}


def test_two_ranks_fit_the_same_centroids_on_both_ranks_data(tmp_path):
    r0, r1 = run_two_ranks(_rank, tmp_path)
    assert r0["fitted"] and r1["fitted"] and r0["fits"] == r1["fits"] == 1
    assert torch.equal(r0["centroids"], r1["centroids"])
    # the same fit as one process on both ranks' vectors together
    reference = GaussianBottleneck(num_codes=1, num_embeddings=3, code_dim=2, kmeans_samples=512)
    reference.remember(torch.cat([blobs(60, seed=10)[0][:90], blobs(60, seed=11)[0]]))
    reference.fit_centroids()
    torch.testing.assert_close(reference.centroids, r0["centroids"])


# ----------------------------------------------------------------------------- through training and export


@pytest.mark.slow
def test_training_fits_the_centroids_and_export_writes_the_vectors(ray_session, tmp_path):
    from lam.data.manifest import create_manifest, write_manifest
    from lam.data.synth import write_synthetic_dataset
    from lam.eval.export import export_actions
    from lam.train.launch import train

    data = tmp_path / "data"
    write_synthetic_dataset(data, files=4, chunks=4, seed=3)
    write_manifest(create_manifest(data, 0.75, 0.25, 0.0), data / "manifest.json")
    cfg = tiny_config(data, tmp_path / "runs", quantizer="gaussian", num_codes=1, codebook_dim=4, num_embeddings=3,
                      num_workers=2, num_epochs=1, batch_size=4, run_name="gaussian")
    outcome = train(cfg, verbose=False)
    state = torch.load(f"{outcome.checkpoint_path}/state.pt", weights_only=True)
    assert bool(state["model"]["quantizer.fitted"]) and int(state["model"]["quantizer.fits"]) == 1
    assert outcome.metrics["ddp/params_in_sync"] == 1.0

    out = tmp_path / "actions.parquet"
    export_actions(outcome.checkpoint_path, str(data), str(out), progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["file", "t", "codes", "action_id", "vector"]
    assert table.schema.metadata[b"lam.checkpoint"].decode() == str(outcome.checkpoint_path)
    assert table.schema.metadata[b"lam.quantizer"] == b"gaussian"
    frame = table.to_pandas()
    vectors = np.stack(frame["vector"].to_numpy())
    assert vectors.shape == (len(frame), 4) and np.isfinite(vectors).all()
    # the ids are the nearest centroid of the exported vectors
    centroids = state["model"]["quantizer.centroids"][0].numpy()
    nearest = ((vectors[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest, frame["action_id"].to_numpy())
