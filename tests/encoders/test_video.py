import numpy as np
import pytest
import torch
from PIL import Image

from finealign.encoders.video import uniform_indices
from finealign.errors import ConfigError, DataError
from finealign.registry import create_encoder


def frames(n):
    return [Image.new("RGB", (32, 32), (25 * k, 255 - 25 * k, 80)) for k in range(n)]


def test_uniform_indices():
    assert uniform_indices(3, 5) == [0, 1, 2]
    assert uniform_indices(10, 5) == [1, 3, 5, 7, 9]
    assert uniform_indices(12, 3) == [2, 6, 10]


def test_one_token_per_frame_from_the_frame_encoder():
    video = create_encoder(
        "video",
        frame_encoder="timm",
        num_frames=4,
        frame_options={"model_name": "test_resnet", "pretrained": False, "embed_dim": 0, "img_size": 32},
    ).eval()
    clips = [frames(8), frames(2)]
    with torch.no_grad():
        out = video(video.collate([video.load(c) for c in clips]))
        picked = [clips[0][i] for i in uniform_indices(8, 4)]
        fe = video.frame_encoder
        reference = fe(fe.collate([fe.load(f) for f in picked])).pooled
    assert out.tokens.shape == (2, 4, fe.embed_dim)
    assert out.mask.tolist() == [[True] * 4, [True, True, False, False]]
    torch.testing.assert_close(out.tokens[0], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled[1], out.tokens[1, :2].mean(0))


def test_precomputed_frame_features():
    video = create_encoder("video", frame_encoder=None, feature_dim=3, num_frames=2, embed_dim=5)
    feats = [np.arange(12, dtype=np.float32).reshape(4, 3), np.ones((1, 3), np.float32)]
    out = video(video.collate([video.load(f) for f in feats]))
    assert out.tokens.shape == (2, 2, 5) and out.mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(DataError, match=r"\(T, 3\)"):
        video.load(np.ones((2, 4), np.float32))
    with pytest.raises(ConfigError, match="feature_dim"):
        create_encoder("video", frame_encoder=None)
