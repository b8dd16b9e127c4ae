"""Checks shared by the figure tests: the book's rules for a figure in its 684-px column."""

import io

import pytest
from matplotlib.text import Text

from kd2m.book import style


def check_column_figure(fig, *, panels: int):
    """The book's rules for a figure: the column's width at 200 dpi (a PNG twice the
    column's 684 CSS pixels), at most three panels per row, every text >= 9 pt."""
    assert tuple(fig.get_size_inches())[0] == pytest.approx(style.COLUMN_WIDTH)
    assert fig.dpi == style.DPI
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == panels
    for ax in visible:
        assert ax.get_subplotspec().get_gridspec().ncols <= 3
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)  # what the inline backend does
    width = int.from_bytes(buf.getvalue()[16:20], "big")
    assert width >= 2 * 684 * 0.95, width
    fig.canvas.draw()
    texts = [
        t
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())
    ]
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 9]
    assert not small, small


def integer_ticks(ax) -> bool:
    """Every major x tick inside the axis range is an integer (and there is one)."""
    lo, hi = sorted(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)
