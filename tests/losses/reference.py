"""Slow, obviously-correct loss references: Python loops over plain floats."""

from __future__ import annotations

import math


def infonce_loop(sim, positives, scale: float) -> float:
    """0.5 · (image→text + text→image); each direction averages, over rows with a positive, the
    mean over that row's positives of -log softmax."""
    s = [[float(x) * scale for x in row] for row in sim.tolist()]
    p = positives.tolist()

    def direction(rows, pos):
        losses = []
        for r, row in enumerate(rows):
            targets = [j for j, flag in enumerate(pos[r]) if flag]
            if not targets:
                continue
            log_z = math.log(sum(math.exp(v) for v in row))
            losses.append(sum(log_z - row[j] for j in targets) / len(targets))
        return sum(losses) / len(losses)

    transpose = [list(col) for col in zip(*s)]
    pos_t = [list(col) for col in zip(*p)]
    return 0.5 * (direction(s, p) + direction(transpose, pos_t))


def hinge_loop(sim, positives, margin: float, hardest: bool) -> list[float]:
    """Per positive pair (row-major order): image→text + text→image hinge cost."""
    s, p = sim.tolist(), positives.tolist()
    n_img, n_txt = len(s), len(s[0])
    costs = []
    for i in range(n_img):
        for j in range(n_txt):
            if not p[i][j]:
                continue
            i2t = [max(0.0, margin - s[i][j] + s[i][k]) for k in range(n_txt) if not p[i][k]]
            t2i = [max(0.0, margin - s[i][j] + s[u][j]) for u in range(n_img) if not p[u][j]]
            pick = max if hardest else sum
            costs.append((pick(i2t) if i2t else 0.0) + (pick(t2i) if t2i else 0.0))
    return costs


def consistency_loop(image_global, text_global, positives, power: int) -> float:
    """mean over caption pairs b != b' of |cos(t_b, t_b') - cos(v_u(b), v_u(b'))|^power."""

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    img, txt, p = image_global.tolist(), text_global.tolist(), positives.tolist()
    owner = [next(u for u in range(len(img)) if p[u][b]) for b in range(len(txt))]
    gaps = [
        abs(cos(txt[a], txt[b]) - cos(img[owner[a]], img[owner[b]])) ** power
        for a in range(len(txt))
        for b in range(len(txt))
        if a != b
    ]
    return sum(gaps) / len(gaps)
