"""Labels for scatter plots that overlap nothing: each label is placed at the nearest free offset around its point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Label offsets tried around a point, nearest first (points); the direction order is fixed, so the
# placement is a pure function of the data: the same report always draws the same picture.
_LABEL_RADII = (6.0, 14.0, 24.0, 36.0, 52.0, 72.0, 96.0)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_LABEL_PAD_PX = 2.0


def _overlap_area(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax: Any, renderer: Any, labels: Sequence[tuple[str, float, float, bool]], obstacles: Sequence[Any], soft: Sequence[Any]) -> list[Any]:
    """Annotate (text, x, y, bold) so no label overlaps another label, a point (`obstacles`, display
    bboxes) or leaves the axes; error bars (`soft`) are avoided when some position allows it.

    Greedy over candidate offsets, nearest first: the first position free of everything wins, else
    the first free of the hard obstacles, else the one overlapping least. Labels far from their point
    get a thin leader line. Call after the layout is final: positions are measured in pixels.
    """
    from matplotlib.transforms import Bbox

    area = ax.get_window_extent(renderer)
    placed: list[Any] = []
    out = []
    for text, x, y, bold in labels:
        best: tuple[tuple[int, float], float, int, int] | None = None
        for radius in _LABEL_RADII:
            for dx, dy in _LABEL_DIRECTIONS:
                ann = ax.annotate(
                    text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points", fontsize=8,
                    fontweight="bold" if bold else "normal",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                )
                box = ann.get_window_extent(renderer).padded(_LABEL_PAD_PX)
                ann.remove()
                outside = box.x0 < area.x0 or box.x1 > area.x1 or box.y0 < area.y0 or box.y1 > area.y1
                hard = sum(_overlap_area(box, o) for o in [*placed, *obstacles]) + (1e9 if outside else 0.0)
                soft_hits = sum(_overlap_area(box, o) for o in soft)
                # rank: free of everything < free of hard obstacles < least hard overlap
                rank = (0 if hard == 0 and soft_hits == 0 else 1 if hard == 0 else 2, hard)
                if best is None or rank < best[0]:
                    best = (rank, radius, dx, dy)
            if best is not None and best[0][0] == 0:
                break
        assert best is not None
        _, radius, dx, dy = best
        ann = ax.annotate(
            text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points", fontsize=8,
            fontweight="bold" if bold else "normal",
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 5} if radius > _LABEL_RADII[0] else None,
            zorder=5,
        )
        placed.append(Bbox(ann.get_window_extent(renderer).padded(_LABEL_PAD_PX).get_points()))
        out.append(ann)
    return out
