"""open_clip towers with token outputs, on a randomly initialised ViT-B-32 (no download): shapes
and masks, pooled outputs equal to open_clip's own encode_image / encode_text (so the token path
is the real model), a local checkpoint round trip, and named errors."""

import pytest
import torch

pytest.importorskip("open_clip")

from finealign.encoders.openclip import _load  # noqa: E402
from finealign.errors import ConfigError, ShapeError  # noqa: E402
from finealign.registry import create_encoder  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def towers():
    return create_encoder("openclip_vision"), create_encoder("openclip_text"), _load("ViT-B-32", None, None)[0]


def test_tokens_masks_and_pooled_equal_open_clips_own_outputs(towers):
    vision, text, model = towers
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    v = vision(images)
    assert v.tokens.shape == (2, 49, 512) and bool(v.mask.all()) and v.pooled.shape == (2, 512)
    with torch.no_grad():
        torch.testing.assert_close(v.pooled, model.encode_image(images), atol=1e-5, rtol=1e-5)
    ids = text.collate(["a dog on the grass", "two people ride bikes down a long road"])
    t = text(ids)
    assert t.tokens.shape == (2, 77, 512) and t.mask.sum(1).tolist() == [7, 10]  # SOT … EOT
    with torch.no_grad():
        torch.testing.assert_close(t.pooled, model.encode_text(ids), atol=1e-5, rtol=1e-5)
    # the pooled EOT vector is the last real token of the projected sequence
    torch.testing.assert_close(t.tokens[0, 6], t.pooled[0])
    assert not any(p.requires_grad for p in vision.parameters())  # frozen by default


def test_a_local_checkpoint_round_trips_and_a_wrong_one_names_the_tensor(towers, tmp_path):
    _, _, model = towers
    path = tmp_path / "clip.pt"
    torch.save(model.state_dict(), path)
    loaded = create_encoder("openclip_vision", checkpoint_path=str(path))
    torch.testing.assert_close(loaded.backbone.proj, model.visual.proj)
    bad = {k: (v[:1] if k == "visual.proj" else v) for k, v in model.state_dict().items()}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ShapeError, match="visual.proj is"):
        _load.cache_clear()
        create_encoder("openclip_vision", checkpoint_path=str(tmp_path / "bad.pt"))


def test_unknown_model_and_tag_are_named():
    with pytest.raises(ConfigError, match="did you mean 'ViT-B-32'"):
        create_encoder("openclip_vision", model_name="ViT-B-23")
    with pytest.raises(ConfigError, match="no pretrained tag 'opneai'.*openai"):
        create_encoder("openclip_vision", pretrained="opneai")
