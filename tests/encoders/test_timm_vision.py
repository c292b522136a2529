import pytest
import torch
from PIL import Image

from finealign.encoders.common import BackboneEncoder
from finealign.errors import ConfigError, DataError
from finealign.registry import create_encoder, list_encoders


def images(n, size=(40, 30)):
    return [Image.new("RGB", size, (40 * i, 100, 200 - 30 * i)) for i in range(n)]


def encode(encoder, raws):
    encoder.eval()
    with torch.no_grad():
        return encoder(encoder.collate([encoder.load(r) for r in raws]))


def test_all_encoders_registered():
    assert {"timm", "hf_text", "minilm", "mobilenet_v2", "bigru", "video"} <= set(list_encoders())


def test_cnn_grid_tokens_and_pooled_is_their_mean():
    enc = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=0, img_size=64)
    out = encode(enc, images(3))
    grid = enc.backbone.forward_features(enc.collate([enc.load(i) for i in images(3)]))
    assert out.tokens.shape == (3, grid.shape[2] * grid.shape[3], enc.backbone.num_features)
    assert out.mask.all() and out.mask.dtype == torch.bool
    # ResNet's head is a global average pool: the global vector is the mean of the grid tokens.
    torch.testing.assert_close(out.pooled, out.tokens.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens[:, 0], grid[:, :, 0, 0])


def test_vit_drops_the_cls_token_and_uses_it_as_global():
    enc = create_encoder("timm", model_name="test_vit", pretrained=False, embed_dim=0, img_size=32)
    x = enc.collate([enc.load(i) for i in images(2)])
    out = encode(enc, images(2))
    feats = enc.backbone.forward_features(x)
    patch = enc.backbone.patch_embed.patch_size[0]
    assert out.tokens.shape == (2, (32 // patch) ** 2, enc.backbone.num_features)
    torch.testing.assert_close(out.tokens, feats[:, enc.backbone.num_prefix_tokens :])
    torch.testing.assert_close(out.pooled, feats[:, 0])


def test_projection_to_embed_dim():
    enc = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=24, img_size=64)
    out = encode(enc, images(2))
    assert out.tokens.shape[-1] == out.pooled.shape[-1] == enc.embed_dim == 24


def test_wider_head_falls_back_to_token_mean():
    # MobileNetV3's conv head widens the pooled vector; tokens and global must share one width.
    enc = create_encoder("timm", model_name="mobilenetv3_small_050", pretrained=False, embed_dim=0, img_size=64)
    out = encode(enc, images(2))
    assert out.pooled.shape[-1] == out.tokens.shape[-1]
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))


def test_freeze_keeps_backbone_fixed_and_in_eval_mode():
    enc = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=8, freeze=True)
    enc.train()
    assert not enc.backbone.training and enc.proj.training
    assert all(not p.requires_grad for p in enc.backbone_parameters())
    assert {id(p) for p in enc.head_parameters()} == {id(p) for p in enc.proj.parameters()}
    out = enc(enc.collate([enc.load(i) for i in images(2)]))
    out.tokens.sum().backward()
    assert enc.proj.weight.grad is not None


def test_checkpoint_path_loads_local_weights(tmp_path):
    source = create_encoder("timm", model_name="test_resnet", pretrained=False, embed_dim=0)
    torch.save(source.backbone.state_dict(), tmp_path / "w.pth")
    loaded = create_encoder("timm", model_name="test_resnet", checkpoint_path=str(tmp_path / "w.pth"), embed_dim=0)
    torch.testing.assert_close(encode(loaded, images(2)).tokens, encode(source, images(2)).tokens)
    assert loaded.weights_identity()["checkpoint"]["path"].endswith("w.pth")


def test_checkpoint_and_config_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope.pth")):
        create_encoder("timm", model_name="test_resnet", checkpoint_path=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_encoder("timm", model_name="resnet_does_not_exist", pretrained=False)
    with pytest.raises(ConfigError, match="embed_dim"):
        create_encoder("timm", model_name="test_resnet", embed_dim=-1)


def test_missing_image_path_names_the_file(tmp_path):
    enc = create_encoder("timm", model_name="test_resnet", pretrained=False)
    assert isinstance(enc, BackboneEncoder)
    with pytest.raises(DataError, match=str(tmp_path / "x.jpg")):
        enc.load(tmp_path / "x.jpg")
