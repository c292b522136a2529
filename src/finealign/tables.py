"""Tables for papers: any pandas frame as a LaTeX booktabs tabular (needs \\usepackage{booktabs}).

Text cells are escaped; `$...$` segments are kept as math, so a cell may say `227.3 $\\pm$ 2.4`.
"""

from __future__ import annotations

import pandas as pd

_ESCAPES = (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"), ("{", r"\{"),
            ("}", r"\}"), ("–", "--"), ("±", r"$\pm$"), ("×", r"$\times$"), ("Δ", r"$\Delta$"), ("µ", r"$\mu$"),
            ("μ", r"$\mu$"))  # fmt: skip


def latex_escape(text: str) -> str:
    """Escape LaTeX's specials outside $...$ segments (the math we wrote ourselves stays as is)."""
    parts = str(text).split("$")
    for i in range(0, len(parts), 2):  # even parts are text, odd ones math
        for char, repl in _ESCAPES:
            parts[i] = parts[i].replace(char, repl)
    return "$".join(parts)


def _cell(value) -> str:
    if isinstance(value, float):
        return "--" if value != value else f"{value:.4g}"  # NaN → a dash
    return latex_escape(str(value))


# Shrinks the tabular to the line only when it is wider (graphicx's \resizebox measures it first):
# a table that fits keeps its font size, one that would not still fits its column or page.
SHRINK_TO_LINE = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


def to_booktabs(
    frame: pd.DataFrame, caption: str = "", label: str = "", *, fit: bool = False, colsep_pt: float | None = None
) -> str:
    """`fit`: never wider than the line it is set in (needs \\usepackage{graphicx}; SHRINK_TO_LINE).
    `colsep_pt`: the space either side of a column (LaTeX's \\tabcolsep, 6 pt by default)."""
    cols = list(frame.columns)
    sep = [rf"\setlength{{\tabcolsep}}{{{colsep_pt:g}pt}}"] if colsep_pt is not None else []
    lines = [r"\begin{table}[t]", r"\centering", r"\small", *sep, *([SHRINK_TO_LINE] if fit else []),
             r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
             r"\toprule", " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]  # fmt: skip
    for _, row in frame.iterrows():
        lines.append(" & ".join(_cell(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if fit else "")]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
