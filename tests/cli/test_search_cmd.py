"""`finealign search build|query` over a feature cache entry and over plain .npy arrays."""

import json

import numpy as np
import pytest

from finealign.cli.main import main
from finealign.formats.feature_cache import ARRAY_FILES, META_FILE

pytest.importorskip("faiss")


def fake_cache_entry(folder, items=6, captions_per_item=2, dim=16, seed=0):
    """A complete cache entry whose caption j describes image j // captions_per_item (tokens nearby)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    visual = rng.standard_normal((items, 5, dim)).astype(np.float16)
    owner = np.repeat(np.arange(items), captions_per_item)
    text = (visual[owner][:, :4] + 0.05 * rng.standard_normal((len(owner), 4, dim))).astype(np.float16)
    arrays = {"visual_tokens": visual, "visual_mask": np.ones((items, 5), bool),
              "visual_pooled": visual.mean(1), "text_tokens": text, "text_mask": np.ones((len(owner), 4), bool),
              "text_pooled": text.mean(1), "caption_item": owner.astype(np.int64)}  # fmt: skip
    assert set(f"{k}.npy" for k in arrays) == set(ARRAY_FILES)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    meta = {"complete": True, "key": "fake", "vision": {"name": "tiny_vit", "options": {}, "weights": {}},
            "text": {"name": "tiny_bert", "options": {}, "weights": {}}}  # fmt: skip
    (folder / META_FILE).write_text(json.dumps(meta))
    return owner


def test_build_and_query_a_caption_gallery_from_a_feature_cache(tmp_path, capsys):
    owner = fake_cache_entry(tmp_path / "entry")
    gallery = tmp_path / "gallery"
    assert main(["search", "build", str(gallery), "--cache", str(tmp_path / "entry"), "--index", "flat",
                 "--index", "ivf:ivf_lists=2,ivf_probe=2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "12 text items, d=16, 48 tokens, indexes ['flat', 'ivf']" in out and "cache:tiny_vit+tiny_bert:" in out
    assert main(["search", "query", str(gallery), "--cache", str(tmp_path / "entry"), "--ids", "0", "4",
                 "--rerank", "mean_max", "--top-k", "2", "--index", "ivf"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["query", "rank", "item", "score", "global"]
    rows = [line.split() for line in lines[1:]]
    assert len(rows) == 4
    for query, rank, item, _, _ in rows:  # each image's two best captions are its own two
        assert owner[int(item)] == int(query) and rank in ("1", "2")


def test_arrays_need_a_source_and_queries_must_match_the_gallery(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "t.npy", rng.standard_normal((10, 3, 8)).astype(np.float16))
    np.save(tmp_path / "q.npy", rng.standard_normal((2, 4, 6)).astype(np.float32))
    gallery = str(tmp_path / "g")
    assert main(["search", "build", gallery, "--tokens", str(tmp_path / "t.npy")]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["search", "build", gallery, "--tokens", str(tmp_path / "t.npy"), "--source", "bigru-d8"]) == 0
    capsys.readouterr()
    assert main(["search", "query", gallery, "--tokens", str(tmp_path / "q.npy"), "--source", "bigru-d8"]) == 2
    err = capsys.readouterr().err
    assert "d=6" in err and "d=8" in err
    np.save(tmp_path / "q8.npy", rng.standard_normal((2, 4, 8)).astype(np.float32))
    assert main(["search", "query", gallery, "--tokens", str(tmp_path / "q8.npy"), "--source", "minilm"]) == 2
    err = capsys.readouterr().err
    assert "'minilm'" in err and "'bigru-d8'" in err


def test_a_trained_checkpoint_searches_as_evaluation_ranks(tmp_path, capsys):
    """Gallery of a toy model's test captions (its own towers, --ckpt) re-ranked by its own aligner:
    the scores are the model's, the order is evaluation's (ranks.npz, up to fp16 storage)."""
    import torch

    from finealign.config import compose
    from finealign.devices import resolve_device
    from finealign.engine.experiment import load_trained_model, run_experiment
    from finealign.engine.export import split_features
    from finealign.registry import create_dataset
    from finealign.search import Gallery
    from finealign.tokens import TokenBatch

    run = tmp_path / "run"
    run_experiment(compose(overrides=["train=quick", f"output_dir={run}", "train.progress=false", "device=cpu",
                                      "eval.progress=false", "data.num_train=96", "data.num_val=16",
                                      "data.num_test=24", "encoder.embed_dim=16", "train.epochs=1"]))  # fmt: skip
    ckpt = run / "model.pt"
    gallery = tmp_path / "gallery"
    assert main(["search", "build", str(gallery), "--ckpt", str(ckpt), "--split", "test"]) == 0
    assert "ckpt:model.pt:" in capsys.readouterr().out
    assert main(["search", "query", str(gallery), "--ckpt", str(ckpt), "--ids", "0", "--rerank", "model"]) == 0
    assert "query" in capsys.readouterr().out

    model, spec = load_trained_model(ckpt, ["device=cpu"])
    split = create_dataset(spec.data[0], **spec.data[1]).split("test")
    cpu = resolve_device("cpu")
    v = [torch.from_numpy(a.astype(np.float32)) for a in split_features(model, split, "visual", device=cpu)]
    t = [torch.from_numpy(a.astype(np.float32)) for a in split_features(model, split, "text", device=cpu)]
    images, captions = TokenBatch(v[0], v[1].bool(), v[2]), TokenBatch(t[0], t[1].bool(), t[2])
    picked = split_features(model, split, "visual", only=[3, 1], device=cpu)  # what `query --ids 3 1` encodes
    width = picked[0].shape[1]
    # (a batch of 2 vs 24 may round differently in BLAS: fp16 storage tolerance)
    np.testing.assert_allclose(picked[0].astype(np.float32), v[0][[3, 1], :width].numpy(), atol=2e-3, rtol=2e-3)
    with torch.no_grad():
        scores = model.aligner.eval()(images, captions).numpy()
    g = Gallery(gallery)
    everything = captions.tokens.shape[0]
    result = g.query(
        images, everything, rerank=model.aligner, shortlist=everything, feature_source=g.manifest["feature_source"]
    )
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, result.ids, 1), rtol=1e-4, atol=1e-5)
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # best first
    owner = split.caption_item.numpy()
    search_rank = 1 + np.array([np.flatnonzero(owner[result.ids[q]] == q).min() for q in range(len(result.ids))])
    evaluated = np.load(run / "ranks.npz")["i2t"]
    assert (search_rank == evaluated).mean() >= 0.9, (search_rank, evaluated)  # fp16 storage may swap near-ties
