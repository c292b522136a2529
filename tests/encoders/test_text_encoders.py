import pytest
import torch

from finealign.encoders.vocabulary import Vocabulary, tokenize
from finealign.errors import ConfigError, DataError
from finealign.registry import create_encoder

CAPTIONS = ["a dog runs near water .", "a cat", "child and red ball near a beach ."]


def encode(encoder, captions):
    encoder.eval()
    with torch.no_grad():
        return encoder(encoder.collate([encoder.load(c) for c in captions]))


def test_hf_text_tokens_mask_and_cls_pooling(tiny_bert_dir):
    enc = create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0, pooling="cls")
    out = encode(enc, CAPTIONS)
    ids = enc.tokenizer(CAPTIONS, padding=True)["input_ids"]
    assert out.tokens.shape == (3, len(ids[0]), 16)
    assert out.mask.tolist() == [[t != 0 for t in row] for row in ids]  # [PAD] is id 0
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])


def test_hf_text_mean_pooling_is_the_masked_mean(tiny_bert_dir):
    enc = create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0, pooling="mean")
    out = encode(enc, CAPTIONS)
    for i in range(3):
        real = out.tokens[i][out.mask[i]]
        torch.testing.assert_close(out.pooled[i], real.mean(0))


def test_hf_text_special_tokens_can_be_masked(tiny_bert_dir):
    keep = encode(create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0), CAPTIONS)
    drop_enc = create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=0, keep_special_tokens=False)
    drop = encode(drop_enc, CAPTIONS)
    assert (keep.mask.sum(1) - drop.mask.sum(1)).tolist() == [2, 2, 2]  # [CLS] and [SEP]
    assert not drop.mask[:, 0].any()


def test_hf_text_projection_max_length_and_errors(tiny_bert_dir, tmp_path):
    enc = create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), embed_dim=12, max_length=4, freeze=True)
    out = encode(enc, CAPTIONS)
    assert out.tokens.shape == (3, 4, 12) and out.pooled.shape == (3, 12)
    assert all(not p.requires_grad for p in enc.backbone_parameters())
    with pytest.raises(DataError, match=str(tmp_path / "missing_model")):
        create_encoder("hf_text", model_name_or_path=str(tmp_path / "missing_model"))
    with pytest.raises(ConfigError, match="pooling"):
        create_encoder("hf_text", model_name_or_path=str(tiny_bert_dir), pooling="max")
    with pytest.raises(DataError, match="caption string"):
        enc.load(3)


def test_vocabulary():
    assert tokenize("A Dog, running!") == ["a", "dog", "running"]
    vocab = Vocabulary.build(["a dog", "a cat", "a dog"], min_count=2)
    assert vocab.words == ["<pad>", "<unk>", "a", "dog"]
    assert vocab.encode("a cat dog") == [2, 1, 3]
    assert vocab.encode("...") == [1]


def test_bigru_matches_unpadded_single_runs():
    torch.manual_seed(0)
    enc = create_encoder("bigru", embed_dim=6, word_dim=5)
    enc.build_vocab(CAPTIONS)
    batch = encode(enc, CAPTIONS)
    lengths = [len(tokenize(c)) for c in CAPTIONS]
    assert batch.tokens.shape == (3, max(lengths), 6)
    assert batch.mask.sum(1).tolist() == lengths
    for i, caption in enumerate(CAPTIONS):  # reference: each caption alone, no padding at all
        ids = enc.load(caption)[None]
        states, _ = enc.gru(enc.embedding(ids))
        alone = states.view(1, len(ids[0]), 2, 6).mean(2)[0]
        torch.testing.assert_close(batch.tokens[i, : lengths[i]], alone, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batch.pooled[i], alone.mean(0), atol=1e-6, rtol=1e-5)


def test_bigru_vocabulary_travels_with_the_state_dict():
    enc = create_encoder("bigru", embed_dim=4, word_dim=3)
    with pytest.raises(ConfigError, match="build_vocab"):
        enc.load("a dog")
    enc.build_vocab(CAPTIONS)
    fresh = create_encoder("bigru", embed_dim=4, word_dim=3)
    fresh.load_state_dict(enc.state_dict())
    assert fresh.vocab.words == enc.vocab.words
    torch.testing.assert_close(encode(fresh, CAPTIONS).tokens, encode(enc, CAPTIONS).tokens)
    assert enc.backbone_parameters() == []
