"""One training epoch on cached Flickr8k: the frozen path beside the staged path (last blocks trained).

    PYTHONPATH=src FINEALIGN_CACHE=/work/cache OMP_NUM_THREADS=1 \
        python benchmarks/staged_epoch_cost.py --threads 1 2 --repeats 3 \
        --staged data.dataset_options.max_items=1000      # staged entries built for 1,000 images

frozen: data=flickr8k_cached encoder=cached (heads on the cached final features).
staged: the same + data.vision_stage=last_block data.text_stage=last_layer, encoder.*.name=staged
(MobileNetV2 block 17 + the final 1x1 conv and MiniLM's last layer trained at train.backbone_lr).
Both: the first 1,000 training images, train=flickr8k (one caption per image per epoch: 1,000
pairs), batch 128, one epoch, aligner mean_max, InfoNCE, mlp heads. The two paths alternate within
each repeat; prints the median epoch time (Trainer.fit, data loading included), the time to encode
the 1,000-image test gallery (5,000 captions) for evaluation, and the staged/frozen ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from finealign.config import compose, validate
from finealign.engine.evaluate import encode_all
from finealign.engine.model import build_loss, build_model
from finealign.engine.trainer import Trainer
from finealign.registry import create_dataset

BASE = [
    "data=flickr8k_cached", "encoder=cached", "train=flickr8k", "aligner=mean_max", "loss=infonce", "device=cpu",
    "data.max_items.train=1000", "train.epochs=1", "train.batch_size=128", "train.backbone_lr=1e-4",
]  # fmt: skip
STAGED = ["data.vision_stage=last_block", "data.text_stage=last_layer", "encoder.vision.name=staged",
          "encoder.text.name=staged"]  # fmt: skip


def open_path(overrides: list[str]):
    spec = validate(compose(overrides=overrides))
    data = create_dataset(spec.data[0], **spec.data[1])
    return spec, data.split("train"), data.split("test")


def one_run(spec, train, test) -> dict[str, float]:
    torch.manual_seed(0)
    model, loss = build_model(spec, train.meta), build_loss(spec)
    trainer = Trainer(model, loss, spec.train, device=torch.device("cpu"), seed=0, progress=False)
    start = time.perf_counter()
    result = trainer.fit(train)
    epoch = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        encode_all(model.vision, test.items, batch_size=256, device=torch.device("cpu"))
        encode_all(model.text, test.captions, batch_size=256, device=torch.device("cpu"))
    encode = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"epoch_s": epoch, "encode_test_s": encode, "steps": result.steps, "trainable": trainable}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--staged", nargs="*", default=[], help="extra overrides of the staged path only")
    args = p.parse_args()
    paths = {"frozen": open_path(BASE), "staged": open_path([*BASE, *STAGED, *args.staged])}
    for name, (_, train, test) in paths.items():
        print(f"{name}: {train.num_items} training images, {train.num_captions} captions; test {test.num_items}")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        one_run(*paths["frozen"])  # warm-up: page the memory maps in, first-call allocations
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, path in paths.items():  # interleaved: load changes on a shared machine hit both
                runs[name].append(one_run(*path))
                done = runs[name][-1]
                print(f"  {threads} thread(s) {name}: epoch {done['epoch_s']:.2f} s, test encode {done['encode_test_s']:.2f} s",
                      flush=True)  # fmt: skip
        for name, measured in runs.items():
            rows.append({
                "threads": threads, "path": name, "steps": measured[0]["steps"],
                "trainable_params": measured[0]["trainable"],
                "epoch_s": statistics.median(r["epoch_s"] for r in measured),
                "epoch_s_all": " ".join(f"{r['epoch_s']:.2f}" for r in measured),
                "encode_test_s": statistics.median(r["encode_test_s"] for r in measured),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for threads in args.threads:
        t = table[table.threads == threads].set_index("path")
        print(f"{threads} thread(s): staged/frozen epoch {t.epoch_s['staged'] / t.epoch_s['frozen']:.2f}x, "
              f"test encode {t.encode_test_s['staged'] / t.encode_test_s['frozen']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
