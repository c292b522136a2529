"""Training curves of several runs side by side: loss, positive vs hardest-negative score and image
embedding spread per epoch (what `train.json` records, engine/curves.py), plus each run's final
validation/test RSUM — the picture that shows a hinge objective collapsing the embeddings.

    python benchmarks/training_curves.py RUN_DIR... --out benchmarks/results/presets-collapse-2026-12-03

Writes curves.png, curves.csv (tidy: one row per run × epoch) and runs.md (one row per run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PANELS = (
    ("loss", "training loss (log scale)"),
    ("gap", "positive − hardest negative score"),
    ("image_spread", "image embedding spread"),
)


def read_run(run: Path) -> tuple[pd.DataFrame, dict]:
    train = json.loads((run / "train.json").read_text())
    results = json.loads((run / "results.json").read_text())
    curves = pd.DataFrame(train["curves"])
    curves["gap"] = curves["positive_score"] - curves["hardest_negative_score"]
    curves.insert(0, "run", run.name)
    metrics = results["metrics"]
    row = {
        "run": run.name,
        "rsum": metrics["rsum"],
        "i2t_r1": metrics["i2t_r1"],
        "t2i_r1": metrics["t2i_r1"],
        "final_loss": train["metrics"].get("final_loss"),
        "image_spread_first": curves["image_spread"].iloc[0],
        "image_spread_last": curves["image_spread"].iloc[-1],
        "gap_last": curves["gap"].iloc[-1],
        "overrides": results.get("provenance", {}).get("overrides", []),
    }
    return curves, row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--groups",
        nargs="*",
        default=[],
        help="one row of panels per run-name prefix (e.g. c t); runs matching none go in every row",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    read = [read_run(r) for r in args.runs]
    curves = pd.concat([c for c, _ in read], ignore_index=True)
    table = pd.DataFrame([r for _, r in read]).sort_values("run")
    # only what differs between the runs; the overrides they share are printed once
    shared = set.intersection(*(set(o) for o in table["overrides"])) if len(table) else set()
    table["overrides"] = [" ".join(o for o in row if o not in shared) for row in table["overrides"]]
    shared_line = "shared overrides: " + " ".join(sorted(shared))
    curves.to_csv(args.out / "curves.csv", index=False)
    (args.out / "runs.md").write_text(table.to_markdown(index=False, floatfmt=".3g") + f"\n\n{shared_line}\n")
    groups = args.groups or [""]
    fig, axes = plt.subplots(len(groups), len(PANELS), figsize=(5.2 * len(PANELS), 4.0 * len(groups)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for row, prefix in zip(axes, groups, strict=True):
        others = [g for g in groups if g]
        names = sorted(n for n in curves["run"].unique()
                       if n.startswith(prefix) or not any(n.startswith(g) for g in others))  # fmt: skip
        for ax, (key, title) in zip(row, PANELS, strict=True):
            for i, name in enumerate(names):
                run = curves[curves["run"] == name]
                ax.plot(run["epoch"] + 1, run[key], marker="o", ms=3, ls=styles[i // 10 % 4], label=name)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if key == "loss":
                ax.set_yscale("log")
            if key == "gap":  # scores live on different scales (×10 sums, unscaled LSE): symmetric log
                ax.set_yscale("symlog", linthresh=0.05)
                ax.axhline(0.0, color="black", lw=0.8)
        row[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120, bbox_inches="tight")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(shared_line)


if __name__ == "__main__":
    main()
