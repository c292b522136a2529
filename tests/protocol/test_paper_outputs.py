"""What a paper takes from a protocol: the trade-off plot's Pareto front drawn on top (its red
points visible), names that do not overlap, and LaTeX tables that fit a page — compiled with
pdflatex where it is installed, else checked by their columns and characters."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from finealign.protocol import plot as protocol_plot
from finealign.protocol.table import _pareto, paper_frames, to_latex, to_markdown

NAMES = ["global", "mean_max", "hard", "weighted_mean_max", "cross_attention", "tokenflow", "two_stage"]


def protocol_like_frame(names=NAMES) -> pd.DataFrame:
    """Rows as protocol_frame makes them, with wide numbers (three-digit Δ and intervals, costs over
    four decades), two methods short of their budget or seeds, one (cross_attention) off the
    Pareto front."""
    rows = []
    for k, name in enumerate(names):
        ref, grow = k == 0, 10 ** (k / 2)
        row = {"method": name.split(" ")[0], "label": name, "aligner": name.split(" ")[0], "status": "ok",
               "trials": 17 if k == 3 else 20, "budget": 20, "seeds_done": 2 if k == 4 else 3, "seeds": 3,
               "rsum_mean": 350.0 if name == "cross_attention" else 301.6 + 37.3 * k, "rsum_std": 12.4, "i2t_r1_mean": 25.8 + 6.1 * k, "i2t_r1_std": 1.9,
               "t2i_r1_mean": 22.7 + 5.4 * k, "t2i_r1_std": 2.3, "score_peak_mem_mb": 12.5 * grow,
               "cost_ms_per_query": 0.0039 * grow, "cost_ms_per_query_q25": 0.0035 * grow,
               "cost_ms_per_query_q75": 0.0045 * grow}  # fmt: skip
        for key, value in (("cost_vs_global", 30.7), ("cost_vs_floor", 0.0123)):
            row.update({key: value * grow, f"{key}_q25": 0.9 * value * grow, f"{key}_q75": 1.1 * value * grow})
        for metric in ("rsum", "i2t_r1", "t2i_r1"):
            d = 37.3 * k if metric == "rsum" else 1.5
            row.update({f"d_{metric}": math.nan if ref else d, f"d_{metric}_low": math.nan if ref else d - 11.2,
                        f"d_{metric}_high": math.nan if ref else d + 10.8, f"d_{metric}_significant": not ref,
                        f"d_{metric}_note": "reference" if ref else "paired"})  # fmt: skip
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["pareto"] = _pareto(frame)
    return frame


def test_the_pareto_front_is_drawn_over_the_grey_markers(tmp_path, monkeypatch):
    frame = protocol_like_frame()
    front, off = frame[frame["pareto"]], frame[~frame["pareto"]]
    assert 2 <= len(front) < len(frame)  # a front and a method off it
    colours: dict[str, list] = {}
    finish = protocol_plot.finish_figure

    def colour_at(fig, ax, rows):
        """The rendered colour at the centre of each row's point."""
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        height = fig.canvas.get_width_height()[1]
        points = ax.transData.transform(np.column_stack([rows["cost_ms_per_query"], rows["rsum_mean"]]))
        return [tuple(pixels[int(round(height - py)), int(round(px))]) for px, py in points]

    def keep(fig, ax, *args):  # the figure as drawn, before it is saved and closed
        fig.canvas.draw()
        colours["front"], colours["off"] = colour_at(fig, ax, front), colour_at(fig, ax, off)
        return finish(fig, ax, *args)

    monkeypatch.setattr(protocol_plot, "finish_figure", keep)
    assert protocol_plot.plot_protocol(frame, tmp_path / "tradeoff.png").stat().st_size > 0
    for (r, g, b), label in zip(colours["front"], front["label"], strict=True):
        assert r > 150 and g < 90 and b < 90, f"{label}'s point on the front is not red on top: {(r, g, b)}"
    for (r, g, b), label in zip(colours["off"], off["label"], strict=True):
        assert abs(r - g) < 20 and abs(g - b) < 20 and r < 200, f"{label} off the front is not grey: {(r, g, b)}"


def test_method_names_beside_their_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    x, y = np.array([0.05, 0.052, 0.07, 0.9, 0.0039]), np.array([512.0, 511.0, 515.0, 520.0, 301.0])
    labels = ["mean_max", "chan", "weighted_mean_max", "tokenflow", "global"]
    ax.plot(x, y, "o")
    ax.set_xscale("log")
    protocol_plot.label_points(ax, x, y, labels)
    fig.tight_layout()
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == sorted(labels, key=lambda n: x[labels.index(n)])
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    plt.close(fig)


def visible(cell: str) -> str:
    """What a LaTeX cell prints, as characters (for the width estimate without pdflatex)."""
    for source, shown in ((r"$\pm$", "±"), (r"$^{*}$", "*"), (r"$^{\dagger}$", "†"), (r"$\Delta$", "Δ"),
                          (r"$\times$", "×"), (r"$\mu$", "µ"), ("--", "–"), (r"\_", "_")):  # fmt: skip
        cell = cell.replace(source, shown)
    return cell.strip()


def tabulars(tex: str) -> list[list[list[str]]]:
    bodies = re.findall(r"\\begin\{tabular\}\{[lr]+\}\n(.*?)\\end\{tabular\}", tex, flags=re.S)
    rows = [[line for line in body.splitlines() if line.endswith(r"\\")] for body in bodies]
    return [[[visible(c) for c in line[:-2].split(" & ")] for line in table] for table in rows]


# A single-column article's text is 345 pt wide; at \small with \tabcolsep 4 pt these tables
# take about 5 pt per character of their widest row (pdflatex: 329 pt for the 66 characters of
# protocol_like_frame's accuracy table): 69 characters per row are the budget.
ROW_CHARACTERS = 69


def test_the_paper_tables_fit_a_page_by_columns_and_characters():
    frame = protocol_like_frame()
    tex = to_latex(frame, "global", caption="legend", study="toy 1")
    tables = tabulars(tex)
    assert len(tables) == 2 and tex.count(r"\resizebox{\ifdim\width>\linewidth") == 2
    for table in tables:
        assert all(len(row) == 5 for row in table)
        widest = sum(max(len(row[c]) for row in table) for c in range(5))
        assert widest <= ROW_CHARACTERS, (widest, table)
    accuracy, cost = tables
    assert accuracy[1] == ["global", "301.6 ± 12.4", "25.8", "22.7", "ref."]
    assert accuracy[4][0] == "weighted_mean_max†" and accuracy[5][0] == "cross_attention†"  # short of budget/seeds
    assert accuracy[2][4] == "+37.3 [26.1, 48.1]*"
    negative = protocol_like_frame().assign(d_rsum=-52.3, d_rsum_low=-102.4, d_rsum_high=-6.2)
    assert r"$-$52.3 [$-$102.4, $-$6.2]$^{*}$ \\" in to_latex(negative, "global")  # minus signs, not hyphens
    assert cost[1][:3] == ["global", "3.9 [3.5–4.5]", "–"]  # µs; × global of global itself is blank
    assert cost[2][2] == "97.1" and cost[7][2] == "30700"  # medians without exponents
    assert r"\label{tab:toy-1-accuracy}" in tex and r"\label{tab:toy-1-cost}" in tex
    assert "$^{\\dagger}$ short of its tuning budget or seeds" in tex
    # the markdown keeps everything, with × global of global blank there too
    md = to_markdown(frame, "global").splitlines()
    assert "| × global" in md[0].replace("  ", " ") or "× global" in md[0]
    assert re.search(r"\| global .*\| – +\|", md[2]) and "30.7" not in md[2]


def test_the_paper_frames_leave_nothing_unreported():
    accuracy, cost = paper_frames(protocol_like_frame(["global", "hard"]))
    assert list(accuracy.columns) == ["Method", "RSUM", "i2t R@1", "t2i R@1", r"$\Delta$RSUM [CI]"]
    assert list(cost.columns) == ["Method", r"$\mu$s/query [IQR]", r"$\times$ global", r"$\times$ floor", "peak MiB"]
    assert cost.iloc[1, 2] == "97.1"


DOCUMENT = r"""\documentclass[{options}]{{article}}
\usepackage{{booktabs}}
\usepackage{{graphicx}}
\newsavebox\probe
{measure}
\begin{{document}}
\input{{protocol.tex}}
\end{{document}}
"""
# typesets each tabular at its natural width, to read that width from the log
NATURAL = r"\renewcommand{\resizebox}[3]{\sbox\probe{#3}\typeout{NATURAL=\the\wd\probe}\usebox\probe}"


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex is not installed (apt texlive-latex-recommended)"
)
@pytest.mark.slow
def test_the_paper_tables_compile_and_fit_a_page_and_a_column(tmp_path):
    def compile_(options: str, measure: str, names=NAMES) -> str:
        (tmp_path / "protocol.tex").write_text(to_latex(protocol_like_frame(names), "global", caption="legend"))
        (tmp_path / "doc.tex").write_text(DOCUMENT.format(options=options, measure=measure))
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        log = (tmp_path / "doc.log").read_text(errors="replace")
        assert done.returncode == 0, log[-2000:]
        return log

    # as they are, both tables fit a single-column page (345 pt): no shrinking, nothing overfull
    natural = compile_("10pt", NATURAL)
    widths = [float(w) for w in re.findall(r"NATURAL=([\d.]+)pt", natural)]
    assert len(widths) == 2 and max(widths) <= 345.0, widths
    assert "Overfull" not in natural
    # in a two-column paper's column (229.5 pt) they are shrunk to the line, not overfull
    assert "Overfull" not in compile_("twocolumn", "")
    # a long solver label makes the table wider than a page: shrunk, still not overfull
    long = [*NAMES[:5], "tokenflow (3 it., marginal err 0.46)"]
    assert "Overfull" not in compile_("10pt", "", long)
