"""One look for every figure and table of the book, applied by each function that draws one.

Figures are drawn for the book's column (684 px, about 6.84 inches at 100 px per inch):
:data:`COLUMN_WIDTH` inches wide, fonts of at least :data:`MIN_FONT_PT` points, at most three
panels per row, colours from the Okabe-Ito palette (readable with the common colour-vision
deficiencies). Each figure is created with ``dpi = DPI`` (200): the inline backend of
Jupyter renders a figure's PNG at the figure's own dpi (``IPython.core.pylabtools.print_figure``
uses ``fig.dpi``), so a figure of the column's width becomes a PNG of about 1370 px, which
the theme's ``img {max-width: 100%}`` shows at the column's 684 px: two pixels per CSS pixel,
sharp on high-density screens. Nothing is changed at import: the settings live in
:func:`figure_style` (a ``matplotlib.rc_context``) and :func:`finish`.

Tables are pandas Stylers built by :func:`styled`: one number format per column, no index
unless it means something, constant columns said once in the caption.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "COLUMN_WIDTH",
    "DPI",
    "MIN_FONT_PT",
    "OKABE_ITO",
    "STUDENT_BLUE",
    "TEACHER_RED",
    "column_format",
    "figure_style",
    "finish",
    "integer_epochs",
    "new_figure",
    "styled",
]

COLUMN_WIDTH = 6.84
"""Width in inches of every figure: the book's 684-px column at 100 px per inch."""
DPI = 200
"""Dots per inch of every figure (its PNG is twice the column's CSS pixels)."""
MIN_FONT_PT = 9.0
"""Smallest font size, in points at the shown size (tick labels, legends)."""

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow (last: weak on white)
    "#000000",  # black
)
"""Okabe & Ito's colour-blind-safe palette, in the order the figures cycle through it."""
TEACHER_RED = "#D55E00"
"""The teacher's colour in Fig. 3 (the paper's red, Okabe-Ito vermillion)."""
STUDENT_BLUE = "#0072B2"
"""The student's colour in Fig. 3 (the paper's blue, Okabe-Ito blue)."""


def _rc() -> dict[str, Any]:
    from cycler import cycler

    return {
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "figure.facecolor": "white",
        "font.size": 10.0,
        "axes.titlesize": 10.0,
        "axes.labelsize": 10.0,
        "xtick.labelsize": MIN_FONT_PT,
        "ytick.labelsize": MIN_FONT_PT,
        "legend.fontsize": MIN_FONT_PT,
        "legend.title_fontsize": MIN_FONT_PT,
        "figure.titlesize": 11.0,
        "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "lines.linewidth": 1.5,
        "lines.markersize": 4.0,
        "legend.framealpha": 0.85,
        "image.cmap": "cividis",
    }


@contextmanager
def figure_style() -> Iterator[None]:
    """The book's matplotlib settings (an ``rc_context``): draw a figure inside it."""
    import matplotlib as mpl

    with mpl.rc_context(_rc()):
        yield


def new_figure(nrows: int = 1, ncols: int = 1, *, height: float, **kwargs):
    """``plt.subplots`` at the column's width, ``DPI`` dots per inch, constrained layout,
    in :func:`figure_style` (call it inside that context for the rest of the drawing).

    At most three panels per row: a wider grid is a ``ValueError`` (stack the panels)."""
    import matplotlib.pyplot as plt

    if ncols > 3:
        raise ValueError(f"ncols={ncols}: the column holds at most three panels per row")
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, height), dpi=DPI, **kwargs)


def integer_epochs(ax) -> None:
    """Integer ticks only on the x axis (epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def finish(fig, *, close: bool = False):
    """Pin every text of ``fig`` to at least :data:`MIN_FONT_PT` points (tick labels are made
    lazily, at draw time, possibly outside :func:`figure_style`: their size is set here
    explicitly), then optionally close it (the caller displays the returned figure).
    Returns ``fig``."""
    import matplotlib.pyplot as plt

    for ax in fig.axes:
        ax.tick_params(which="both", labelsize=MIN_FONT_PT)
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            text.set_fontsize(max(text.get_fontsize(), 10.0))
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                text.set_fontsize(max(text.get_fontsize(), MIN_FONT_PT))
    for legend in fig.legends:
        for text in legend.get_texts():
            text.set_fontsize(max(text.get_fontsize(), MIN_FONT_PT))
    if close:
        plt.close(fig)
    return fig


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def column_format(values) -> str:
    """One format for a column of numbers, chosen from its range.

    Integers: ``{:.0f}``. Finite non-zero magnitudes within [1e-3, 1e5): fixed point with
    enough decimals for three significant digits of the smallest (at most 4). Otherwise
    scientific with three significant digits. NaN and infinities print as themselves.
    """
    nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    finite = [v for v in nums if math.isfinite(v)]
    if finite and all(v == int(v) for v in finite) and max(abs(v) for v in finite) < 1e9:
        return "{:.0f}"
    mags = [abs(v) for v in finite if v != 0]
    if not mags:
        return "{:.4g}"
    lo, hi = min(mags), max(mags)
    if lo >= 1e-3 and hi < 1e5:
        decimals = min(4, max(0, 2 - math.floor(math.log10(lo))))
        return "{:." + str(decimals) + "f}"
    return "{:.2e}"


def styled(
    frame,
    *,
    caption: str | None = None,
    formats: Mapping[str, str] | None = None,
    hide_index: bool = True,
    drop_constant: bool = True,
    constant_formats: Mapping[str, str] | None = None,
):
    """``frame`` (a DataFrame) as a pandas Styler for the book.

    * every numeric column gets one format (``formats`` or :func:`column_format`);
    * with ``drop_constant`` and at least two rows, a column whose every value is the same
      is removed and said once in the caption (``name: value``);
    * the index is hidden unless ``hide_index`` is False (a meaningful index: row names);
    * HTML ids come from the content, so re-running a notebook gives the same output.
    """
    import numpy as np
    import pandas as pd

    frame = frame.copy()
    notes = []
    if drop_constant and len(frame) >= 2:
        for c in list(frame.columns):
            col = frame[c]
            if col.map(repr).nunique() == 1:
                v = col.iloc[0]
                fmt = (constant_formats or {}).get(c) or (formats or {}).get(c)
                if isinstance(v, bool | np.bool_):
                    notes.append(f"{c}: {_yes_no(v)}")
                    frame = frame.drop(columns=c)
                    continue
                if fmt is None and isinstance(v, float):
                    fmt = column_format([v])
                text = fmt.format(v) if fmt and isinstance(v, int | float) else str(v)
                notes.append(f"{c}: {text}")
                frame = frame.drop(columns=c)
    fmts = dict(formats or {})
    for c in frame.columns:
        if c in fmts:
            continue
        if pd.api.types.is_bool_dtype(frame[c]):
            fmts[c] = _yes_no
            continue
        if pd.api.types.is_numeric_dtype(frame[c]):
            fmts[c] = column_format(frame[c].tolist())
        elif frame[c].map(lambda v: isinstance(v, float)).any():
            nums = [v for v in frame[c] if isinstance(v, int | float) and not isinstance(v, bool)]
            fmt = column_format(nums)
            fmts[c] = lambda v, fmt=fmt: (
                fmt.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
            )
    uuid = hashlib.sha1(frame.to_json(default_handler=str).encode()).hexdigest()[:8]
    sty = frame.style.set_uuid(uuid).format(fmts, na_rep="")
    if hide_index:
        sty = sty.hide(axis="index")
    text = "; ".join(x for x in (caption, "; ".join(notes)) if x)
    if text:
        sty = sty.set_caption(text)
    # numbers (and the cells of mostly-number columns such as "not run") to the right,
    # text to the left, each header aligned with its column
    right = {c for c in frame.columns if _numeric_column(frame[c])}
    for c in frame.columns:
        sty = sty.set_properties(subset=[c], **{"text-align": "right" if c in right else "left"})
    sty = sty.map_index(
        lambda v: f"text-align: {'right' if v in right else 'left'}", axis="columns"
    )
    return sty.set_table_styles(
        [{"selector": "caption", "props": "caption-side: top; text-align: left;"}],
        overwrite=False,
    )


def _yes_no(v) -> str:
    return "yes" if bool(v) else "no"


def _numeric_column(col) -> bool:
    """True for a column of numbers, or of numeric text ("86.45", "61.00 ± 1.41") with
    placeholders ("not run", "—", blanks)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    seen = False
    for v in col:
        if isinstance(v, int | float) and not isinstance(v, bool):
            seen = True
            continue
        text = str(v).strip()
        if text in ("", "—", "not run", "nan"):
            continue
        head = text.split(" ± ")[0]
        try:
            float(head)
        except ValueError:
            return False
        seen = True
    return seen


def glue_all(values: Mapping[str, Any]) -> None:
    """Glue each value (:func:`myst_nb.glue`, not displayed) under its name, for the
    chapter's prose: ``{glue:text}`name``` puts the computed number in the sentence."""
    from myst_nb import glue

    for name, value in values.items():
        glue(name, value, display=False)
