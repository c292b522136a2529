import numpy as np

from finealign.cache import build_feature_cache, open_arrays
from tests.data.test_msrvtt import make_msrvtt


def test_msrvtt_frames_cache_one_token_per_sampled_frame(tmp_path, tiny_bert_dir):
    root = make_msrvtt(tmp_path / "msrvtt")
    entry = build_feature_cache(
        "msrvtt",
        {"root": str(root)},
        "train",
        "video",
        {"num_frames": 3, "frame_options": {"model_name": "test_resnet", "pretrained": False, "embed_dim": 0}},
        "hf_text",
        {"model_name_or_path": str(tiny_bert_dir)},
        cache_dir=tmp_path / "cache",
        batch_size=2,
    )
    arrays = open_arrays(entry)
    assert arrays["visual_tokens"].shape[2] == 96  # test_resnet's raw width: frames are not projected
    # train 9K list: video0 (1 frame), video2 (3 frames), video3 (4 frames → 3 sampled)
    assert arrays["visual_tokens"].shape[:2] == (3, 3)
    assert arrays["visual_mask"].sum(1).tolist() == [1, 3, 3]
    assert not arrays["visual_tokens"][0, 1:].any()  # padding frames are zeros
    np.testing.assert_allclose(
        arrays["visual_pooled"][1].astype(np.float32),
        arrays["visual_tokens"][1].astype(np.float32).mean(0),
        rtol=1e-2,
        atol=1e-3,
    )
    assert arrays["caption_item"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
