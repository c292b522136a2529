"""open_clip towers with token outputs, on randomly initialised architectures (no download): the
real ViT-B-32, and tiny registered ones for every supported tower kind (CLIP, custom text tower with
a timm trunk, Hugging Face text tower). Shapes and masks, pooled outputs equal to open_clip's own
encode_image / encode_text (so the token path is the real model), local checkpoints, and named
errors (unsupported towers, wrong shapes, no network, unknown names)."""

import pytest
import torch

pytest.importorskip("open_clip")

from finealign.encoders.openclip import _load  # noqa: E402
from finealign.errors import ConfigError, ShapeError  # noqa: E402
from finealign.registry import create_encoder  # noqa: E402


@pytest.fixture(scope="module")
def towers():  # the real ViT-B-32 architecture: ~5 s to build
    return create_encoder("openclip_vision"), create_encoder("openclip_text"), _load("ViT-B-32", None, None)[0]


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---- every supported tower kind, on tiny registered architectures (fast) ----


@pytest.fixture(scope="module")
def tiny_names(tmp_path_factory, tiny_bert_dir):
    from tests.encoders.tiny_models import register_tiny_openclip

    return register_tiny_openclip(tmp_path_factory.mktemp("openclip_configs"), tiny_bert_dir)


def reference_mask(name, ids, tokenizer):
    """The caption's real tokens, read off the ids the slow way (one caption, one position at a time)."""
    from tests.encoders.tiny_models import TINY_CLIP, TINY_HF_TEXT

    rows = []
    for row in ids.tolist():
        if name == TINY_CLIP:  # causal CLIP: start-of-text … end-of-text (the largest id)
            end = row.index(max(row))
            rows.append([i <= end for i in range(len(row))])
        elif name == TINY_HF_TEXT:  # BERT without its CLS position: the non-padding ids after it
            pad = tokenizer.tokenizer.pad_token_id
            rows.append([t != pad for t in row[1:]])
        else:  # bidirectional, last-position pool: the non-padding ids
            rows.append([t != 0 for t in row])
    return torch.tensor(rows)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["clip", "custom_text_timm_vision", "hf_text"])
def test_every_supported_tower_gives_tokens_masks_and_open_clips_own_pooled_outputs(tiny_names, which):
    name = tiny_names[which]
    _load.cache_clear()
    vision = create_encoder("openclip_vision", model_name=name)
    text = create_encoder("openclip_text", model_name=name)
    model = _load(name, None, None)[0]
    import open_clip
    from PIL import Image

    images = vision.collate([vision.load(Image.new("RGB", (50 + 10 * i, 40), (40 * i, 90, 200))) for i in range(2)])
    v = vision(images)
    n, lv, d = v.tokens.shape
    assert n == 2 and d == vision.embed_dim == open_clip.get_model_config(name)["embed_dim"] and bool(v.mask.all())
    patches = (160 // 16) ** 2 if which == 1 else (32 // 8) ** 2  # test_vit: 160 px / 16; tiny ViT: 32 px / 8
    assert lv == patches  # every patch, no CLS
    ids = text.collate(["a dog runs on the grass", "a red ball"])
    t = text(ids)
    with torch.no_grad():
        torch.testing.assert_close(v.pooled, model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t.pooled, model.encode_text(ids), atol=1e-5, rtol=1e-5)
    assert t.tokens.shape[:2] == t.mask.shape and t.tokens.shape[2] == text.embed_dim == d
    torch.testing.assert_close(t.mask, reference_mask(name, ids, text.tokenizer))
    assert 0 < int(t.mask[1].sum()) < int(t.mask[0].sum())  # the shorter caption has fewer real tokens


def test_towers_without_token_outputs_are_refused_naming_what_is_supported(tmp_path):
    import json

    import open_clip

    (tmp_path / "finealign-tiny-rn.json").write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }))  # fmt: skip
    (tmp_path / "finealign-tiny-convtimm.json").write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg",
                                        "timm_proj": "linear"},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }))  # fmt: skip
    open_clip.add_model_config(tmp_path)
    with pytest.raises(
        ConfigError, match="ModifiedResNet has no token outputs.*supported: vision: open_clip VisionTransformer"
    ):
        create_encoder("openclip_vision", model_name="finealign-tiny-rn")
    with pytest.raises(ConfigError, match="timm trunk ResNet.*supported"):
        create_encoder("openclip_vision", model_name="finealign-tiny-convtimm")
    assert create_encoder("openclip_text", model_name="finealign-tiny-rn").embed_dim == 16  # its text tower is fine


def test_first_mismatched_tensor_is_named_and_a_missing_file_says_what_to_place(tiny_names, tmp_path):
    name = tiny_names[0]
    model = _load(name, None, None)[0]
    state = model.state_dict()
    keys = list(state)
    first, later = keys[3], keys[-3]
    bad = {k: (v[..., :1] if k in (first, later) else v) for k, v in state.items()}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in bad.items()}}, tmp_path / "bad.pt")
    with pytest.raises(
        ShapeError,
        match=rf"{first} is .* but the model's is {tuple(state[first].shape)}".replace("(", r"\(").replace(")", r"\)"),
    ):
        create_encoder("openclip_vision", model_name=name, checkpoint_path=str(tmp_path / "bad.pt"))
    # open_clip's training checkpoints (state_dict, "module." prefixes) load as they are
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "good.pt")
    loaded = create_encoder("openclip_text", model_name=name, checkpoint_path=str(tmp_path / "good.pt"))
    torch.testing.assert_close(loaded.text_projection, model.text_projection)
    with pytest.raises(ConfigError, match="checkpoint_path .*missing.pt' is not a file"):
        create_encoder("openclip_vision", model_name=name, checkpoint_path=str(tmp_path / "missing.pt"))


def test_no_network_says_which_file_to_place_where(monkeypatch, tmp_path):
    import open_clip.factory
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    _load.cache_clear()
    with pytest.raises(ConfigError) as info:
        create_encoder("openclip_vision", model_name="ViT-B-32", pretrained="openai")
    message = str(info.value)
    assert "name resolution" in message and "timm/vit_base_patch32_clip_224.openai" in message
    assert "open_clip_pytorch_model.bin" in message and "checkpoint_path=" in message
    assert "huggingface-cli download timm/vit_base_patch32_clip_224.openai" in message
    # the same hint when the local file a config names is not there
    with pytest.raises(
        ConfigError, match="not a file; the weights of ViT-B-32/openai are the file .* of the Hugging Face repo"
    ):
        create_encoder(
            "openclip_vision",
            model_name="ViT-B-32",
            pretrained="openai",
            checkpoint_path=str(tmp_path / "ViT-B-32.bin"),
        )  # without huggingface_hub open_clip fetches OpenAI's own URL into ~/.cache/clip: say so instead
    monkeypatch.setattr(open_clip.pretrained, "has_hf_hub", lambda necessary=False: False)
    with pytest.raises(
        ConfigError, match=r"openaipublic.*ViT-B-32.pt, which open_clip looks for as ~/.cache/clip/ViT-B-32.pt"
    ):
        create_encoder("openclip_vision", model_name="ViT-B-32", pretrained="openai")


def test_an_unknown_model_far_from_every_name_lists_what_open_clip_offers():
    with pytest.raises(ConfigError, match=r"no model 'qqq-zzz-9' \(open_clip offers \d+: .*RN50.*ViT-B-32"):
        create_encoder("openclip_vision", model_name="qqq-zzz-9")
    with pytest.raises(ConfigError, match="did you mean 'openai'"):
        create_encoder("openclip_text", pretrained="openia")


def toy_images(tmp_path):
    from tests.data.fake_karpathy import make_fake_karpathy

    return make_fake_karpathy(tmp_path / "flickr8k")


@pytest.mark.slow  # ~6 s: three cache builds
def test_feature_cache_of_open_clip_towers_holds_what_they_encode_and_keys_on_the_weights(tiny_names, tmp_path):
    import numpy as np

    from finealign.cache import build_feature_cache, open_arrays
    from finealign.registry import create_dataset

    name, root = tiny_names[0], toy_images(tmp_path)
    options = {"model_name": name}

    def build(vision_options):
        return build_feature_cache("flickr8k", {"root": str(root)}, "test", "openclip_vision", vision_options,
                                   "openclip_text", options, cache_dir=tmp_path / "cache", batch_size=2)  # fmt: skip

    entry = build(options)
    arrays = open_arrays(entry)
    split = create_dataset("flickr8k", root=str(root)).split("test")
    vision, text = create_encoder("openclip_vision", **options), create_encoder("openclip_text", **options)
    with torch.no_grad():
        v = vision(vision.collate([vision.load(split.raw_item(i)) for i in range(split.num_items)]))
        t = text(text.collate(list(split.captions)))
    assert arrays["visual_tokens"].shape == (3, 16, 24) and arrays["visual_mask"].all()
    np.testing.assert_allclose(arrays["visual_tokens"], v.tokens.half().numpy(), atol=2e-3)  # other batch size
    np.testing.assert_allclose(arrays["visual_pooled"], v.pooled.half().numpy(), atol=2e-3)
    np.testing.assert_array_equal(arrays["text_mask"], t.mask.numpy())
    np.testing.assert_allclose(arrays["text_pooled"], t.pooled.half().numpy(), atol=2e-3)
    real = t.mask.numpy()
    np.testing.assert_allclose(arrays["text_tokens"][real], t.tokens.half().numpy()[real], atol=2e-3)
    assert not arrays["text_tokens"][~real].any()  # padding is stored as zeros
    # read back as a dataset split
    cached = create_dataset("features", splits={"test": str(entry)}).split("test")
    assert cached.num_items == 3 and cached.num_captions == 13
    np.testing.assert_array_equal(cached.caption_item.numpy(), split.caption_item.numpy())
    # the same weights find the same entry; other weights (a local checkpoint) get their own
    assert build(options) == entry
    model = _load(name, None, None)[0]
    torch.save({k: v + 0.01 if k == "visual.proj" else v for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    assert build({**options, "checkpoint_path": str(tmp_path / "w.pt")}) != entry


def test_zero_shot_eval_on_toy_images_ranks_like_clips_own_cosine(tiny_names, tmp_path):
    import json

    import torch.nn.functional as F

    from finealign.config import compose
    from finealign.engine.experiment import evaluate_untrained
    from finealign.registry import create_dataset

    name, root = tiny_names[0], toy_images(tmp_path)
    towers = [f"encoder.{side}.{o}" for side in ("vision", "text") for o in (f"model_name={name}", "pretrained=null")]
    base = ["data=flickr8k", f"data.root={root}", "encoder=openclip_vit_b32", "encoder.embed_dim=24", *towers,
            "device=cpu", "eval.progress=false"]  # fmt: skip
    metrics = evaluate_untrained(compose(overrides=[*base, "aligner=global", f"output_dir={tmp_path / 'global'}"]))
    saved = json.loads((tmp_path / "global" / "results.json").read_text())
    assert saved["trained"] is False and saved["labels"]["trained"] is False
    # the same ranking computed from open_clip's own encode_image / encode_text
    model, preprocess, tokenizer = _load(name, None, None)
    split = create_dataset("flickr8k", root=str(root)).split("test")
    with torch.no_grad():
        raw = [split.raw_item(i) for i in range(split.num_items)]  # PIL images
        images = torch.stack([preprocess(image.convert("RGB")) for image in raw])
        sim = (
            F.normalize(model.encode_image(images), dim=-1)
            @ F.normalize(model.encode_text(tokenizer(list(split.captions))), dim=-1).T
        )
    owner = split.caption_item.tolist()
    t2i = [1 + sum(float(sim[u, j]) >= float(sim[owner[j], j]) for u in range(len(sim)) if u != owner[j])
           for j in range(len(owner))]  # fmt: skip
    i2t = [min(1 + sum(float(sim[u, c]) >= float(sim[u, j]) for c in range(len(owner)) if owner[c] != u)
               for j in range(len(owner)) if owner[j] == u) for u in range(len(sim))]  # fmt: skip
    assert metrics["t2i_r1"] == pytest.approx(100 * sum(r == 1 for r in t2i) / len(t2i))
    assert metrics["i2t_r1"] == pytest.approx(100 * sum(r == 1 for r in i2t) / len(i2t))
    assert metrics["t2i_meanr"] == pytest.approx(sum(t2i) / len(t2i))
    # any aligner, on the towers' token outputs
    tokenflow = evaluate_untrained(compose(overrides=[*base, "aligner=tokenflow", f"output_dir={tmp_path / 'tf'}"]))
    assert 0 < tokenflow["rsum"] <= 600 and tokenflow["aligner_converged"] == 1.0


def test_finealign_list_encoders_shows_the_open_clip_towers():
    from finealign.cli.list_cmd import format_kind

    listing = format_kind("encoders")
    assert "openclip_vision  CLIP vision tower (open_clip" in listing
    assert "openclip_text    CLIP text tower (open_clip" in listing


def test_video_frames_through_the_clip_vision_tower_and_the_drl_config_validates(tiny_names):
    """DRL's video side: one token per frame = CLIP's own image embedding of that frame."""
    from PIL import Image

    from finealign.config import compose, validate

    name = tiny_names[0]
    video = create_encoder("video", frame_encoder="openclip_vision", frame_options={"model_name": name}, num_frames=3)
    frames = [Image.new("RGB", (48, 40), (30 * i, 200 - 40 * i, 90)) for i in range(6)]
    batch = video.collate([video.load(frames), video.load(frames[:2])])
    out = video(batch)
    assert out.tokens.shape == (2, 3, 24) and out.mask.tolist() == [[True] * 3, [True, True, False]]
    model, preprocess, _ = _load(name, None, None)
    with torch.no_grad():
        clip = model.encode_image(torch.stack([preprocess(frames[i]) for i in (1, 3, 5)]))  # uniform: segment centres
    torch.testing.assert_close(out.tokens[0], clip, atol=1e-5, rtol=1e-5)
    spec = validate(compose(overrides=["encoder=openclip_vit_b32_video", "data=msrvtt", "method=drl_wti"]))
    assert spec.vision[1]["frame_encoder"] == "openclip_vision" and spec.text[0] == "openclip_text"


def test_every_command_in_docs_anchors_composes_and_validates():
    """docs/anchors.md gives the exact command per anchor: each must at least be a valid config."""
    import shlex

    from finealign.config import compose, config_dir, validate

    page = config_dir().parent / "docs" / "anchors.md"
    if not page.is_file():
        pytest.skip("docs/ is not next to configs/ (an installed package)")
    text = page.read_text()
    commands = [
        c for c in text.replace("\\\n", " ").splitlines() if c.startswith(("finealign train", "finealign eval"))
    ]
    assert len(commands) >= 7
    for command in commands:
        args = shlex.split(command.split("#")[0])[2:]
        # the local weights file of the offline example is not on this machine
        overrides = [a for a in args if "checkpoint_path=" not in a]
        spec = validate(compose(overrides=overrides))
        assert spec.vision[0] in ("openclip_vision", "video", "precomputed"), command


@pytest.mark.filterwarnings("ignore:.*TorchScript:UserWarning", "ignore:.*torch.jit:FutureWarning")
def test_openais_torchscript_release_format_loads_as_a_checkpoint(tiny_names, tmp_path):
    """OpenAI's ViT-B-32.pt is a TorchScript archive (not loadable with weights_only): read its state dict."""
    import open_clip

    name = tiny_names[0]
    model = _load(name, None, None)[0]
    release = type(model)(**open_clip.get_model_config(name)).eval()
    with torch.no_grad():
        release.text_projection.add_(1.0)  # weights that differ from the random init `_load` built
    scripted = torch.jit.script(release)
    torch.jit.save(scripted, tmp_path / "release.pt")
    loaded = create_encoder("openclip_text", model_name=name, checkpoint_path=str(tmp_path / "release.pt"))
    torch.testing.assert_close(loaded.text_projection, scripted.state_dict()["text_projection"])
    assert not torch.equal(loaded.text_projection, model.text_projection)  # it really loaded the file
