"""The report's figures, drawn with matplotlib on :class:`~matplotlib.figure.Figure` objects with the
Agg canvas (no pyplot, no global backend switch), written as PNG and SVG.

Per problem:

* :func:`heatmap_figure`: rrmse at M=1 for estimators × (checkpoint, layer), log colour scale, the
  best estimator of each column boxed and its ties (within 2 standard errors) dashed — the
  report's headline;
* :func:`story_figure`: rrmse at M=1 and relative bias against the training epoch, per layer;
* :func:`bias_variance_figure`: relative bias against the relative standard deviation of one
  sample, per checkpoint and layer, every point labelled with a leader line;
* :func:`throughput_figure`: samples/s per estimator (horizontal bars);

and per (problem, checkpoint) :func:`accuracy_figure`: rrmse and ``1 − cosine`` against M, per
layer, ``1 − cos`` so that curves near a cosine of 1 separate on a log axis.

Figures that hold many estimators: colours by family (one hue per family, shades within it;
:func:`styles`), a marker and a dash pattern per estimator within its family, markers at a few
points of each line only, lines cut into small multiples of whole families when one panel would
hold more than :data:`MAX_LINES` (:func:`~sbn_bench.reports.families.panel_groups`), axes shared
by every panel of a figure (and by the checkpoints of a problem), and an estimator whose value is
more than :data:`OUTLIER_FACTOR` × the panel's median left off the scale and named in the panel
(rrmse against M by its value at the most samples, :func:`scale`).

Speed: fixed figure sizes and margins (no tight layout or tight bounding boxes: those measure
every text several times), shared axes that label only outer panels, 100 dpi PNG, SVG with text
kept as text.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from sbn_bench.metrics import SQUARED_METRICS, layer_key
from sbn_bench.reports.families import (
    OTHER,
    UNRANKED_FAMILIES,
    by_family,
    family_order,
    panel_groups,
)
from sbn_bench.reports.load import checkpoint_axis, is_wide
from sbn_bench.reports.ranking import Estimate, rank, upper_bound

DPI = 100
FIGURE_KINDS = ("headline", "story", "accuracy", "bias_variance", "throughput")
"""The kinds of figure a report writes (file names ``<problem>[_<checkpoint>]_<kind>.png|svg``)."""
MAX_LINES = 12
"""Most lines in one panel; more are cut into small multiples by family."""
OUTLIER_FACTOR = 100.0
"""An estimator more than this many times the panel's median is left off the scale, with a note."""
MARKERS_PER_LINE = 4

FAMILY_CMAPS = {
    "psa": ("Reds", 0.8, 0.8), "straight-through": ("Oranges", 0.42, 0.72),
    "relaxed": ("Greens", 0.45, 0.95), "score-function": ("Blues", 0.5, 0.95),
    "antithetic": ("Purples", 0.5, 0.95), "exact": ("Greys", 0.55, 0.85),
    "control-variates": ("BrBG", 0.68, 0.95), "local-expectation": ("cividis", 0.7, 0.92),
}
"""The hue of each built-in family: a sequential colormap and the range of shades its members
take (light to dark); control variates teal, local expectation olive."""
SPARE_CMAPS = (("RdPu", 0.5, 0.95), ("BrBG", 0.05, 0.28), ("PiYG", 0.0, 0.22),
               ("YlOrBr", 0.15, 0.4), ("Greys", 0.45, 0.9))
"""Hues for the other families (plug-ins'), in order of first appearance: pinks, browns,
magentas, yellows, then greys (the last two near the built-in olive and grey in hue, told apart by
shade)."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
DASHES = ("-", "--", "-.", ":")

RC = {
    "font.size": 8.5, "axes.titlesize": 9, "axes.labelsize": 8.5, "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "axes.grid": True, "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6, "axes.edgecolor": "#888888", "axes.linewidth": 0.7,
    "axes.axisbelow": True, "svg.fonttype": "none", "svg.hashsalt": "sbn-bench",
    "path.simplify": True, "axes.titley": 1.02, "axes.titlepad": 2.0,
    "xtick.minor.visible": False, "ytick.minor.visible": False,
}
"""Matplotlib settings of every report figure (SVG text kept as text: small and fast)."""


@dataclass(frozen=True)
class Style:
    """How one estimator is drawn in every figure of a report."""

    colour: tuple[float, float, float]
    marker: str
    dash: str
    family: str


def styles(estimators: Sequence[str], families: Mapping[str, str]) -> dict[str, Style]:
    """One :class:`Style` per estimator: the hue of its family, a shade of it per member (dark to
    light), a marker and a dash pattern per member. The same in every figure of a report."""
    out: dict[str, Style] = {}
    spare = iter(SPARE_CMAPS * 4)
    for fam in family_order(estimators, families):
        members = [e for e in estimators if families.get(e, OTHER) == fam]
        name, light, dark = FAMILY_CMAPS.get(fam) or next(spare)
        cmap = mpl.colormaps[name]
        shades = [(light + dark) / 2 + 0.1 * (dark - light)] if len(members) == 1 else \
            np.linspace(dark, light, len(members))
        for i, e in enumerate(members):
            r, g, b, _ = cmap(float(shades[i]))
            out[e] = Style((r, g, b), MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)], fam)
    return out


def save(fig: Figure, base: Path) -> tuple[Path, Path]:
    """Write ``base.png`` and ``base.svg`` at the figure's own size (no tight bounding box)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    with mpl.rc_context(RC):
        fig.savefig(png, dpi=DPI, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png, svg


# --------------------------------------------------------------------------------------------
# layout helpers


def _grid(nrows: int, ncols: int, *, panel: tuple[float, float] = (2.5, 1.9), left: float = 0.75,
          right: float = 2.0, top: float = 0.75, bottom: float = 0.55, wgap: float = 0.2,
          hgap: float = 0.45, sharex: bool | str = "col", sharey: bool | str = "row",
          title: str = "") -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows × ncols`` panels of ``panel`` inches with fixed margins (inches)."""
    w = left + ncols * panel[0] + (ncols - 1) * wgap + right
    h = top + nrows * panel[1] + (nrows - 1) * hgap + bottom
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wgap / panel[0], hspace=hgap / panel[1])
    for ax in axes.ravel():
        ax.xaxis.set_label_coords(0.5, -0.3 / panel[1])
        ax.yaxis.set_label_coords(-0.5 / panel[0], 0.5)
    if title:
        fig.suptitle(title, x=left / w, ha="left", y=1 - 0.12 / h, va="top", fontsize=10)
    return fig, axes


def _text_inches(n_chars: int, fontsize: float = 7.5, bold: bool = False) -> float:
    """About how wide ``n_chars`` characters of the report's sans-serif font are, in inches (for
    margins that must hold labels such as ``relax:eta=1.0,tau=0.5,hidden=16``)."""
    return n_chars * fontsize / 72 * (0.64 if bold else 0.6)


def _legend_room(names: Sequence[str]) -> float:
    """Inches at the right of a figure that hold the legend of ``names`` (at least 2)."""
    longest = max((len(str(n)) for n in names), default=0)
    return max(2.0, 0.55 + _text_inches(longest + 2))


def _layer_title(layer: str, n_layers: int) -> str:
    if layer.isdigit():
        return f"layer {layer} of {n_layers}"
    return {"out": "output layer", "all": "all parameters"}.get(layer, layer)


def _legend(fig: Figure, shown: Sequence[str], sty: Mapping[str, Style], extra: Sequence = (),
            x: float | None = None) -> None:
    """One legend at the right of the figure, estimators grouped under their family's name."""
    handles: list = []
    fam = None
    for e in shown:
        if sty[e].family != fam:
            fam = sty[e].family
            handles.append(Line2D([], [], linestyle="none", label=fam))
        handles.append(Line2D([], [], color=sty[e].colour, marker=sty[e].marker,
                              linestyle=sty[e].dash, label=f"  {e}", linewidth=1.4, markersize=4.5))
    handles += list(extra)
    w = fig.get_figwidth()
    room = _legend_room(shown)
    leg = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(x if x is not None else
                                                                         1 - (room - 0.1) / w, 0.93),
                     frameon=False, handlelength=2.6, borderaxespad=0, labelspacing=0.35)
    for text, h in zip(leg.get_texts(), handles):
        if isinstance(h, Line2D) and h.get_linestyle() in ("None", "none") and not h.get_marker() \
                or (isinstance(h, Line2D) and h.get_marker() in ("None", "none", "")
                    and h.get_linestyle() in ("None", "none")):
            text.set_fontweight("bold")


def _log_limits(values: np.ndarray, pad: float = 1.35) -> tuple[float, float] | None:
    v = values[np.isfinite(values) & (values > 0)]
    if v.size == 0:
        return None
    top = sys.float_info.max  # finite limits for values near it (matplotlib refuses infinite ones)
    lo, hi = float(v.min()) / pad, min(float(v.max()) * pad, top)
    if hi / lo < 10:  # at least one decade, so that the log axis has a labelled tick
        mid = math.sqrt(lo) * math.sqrt(hi)  # not √(lo·hi), which overflows beyond 1e154
        lo, hi = mid / math.sqrt(10), min(mid * math.sqrt(10), top)
    return lo, hi


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(x: float, _pos: object = None) -> str:
    """``10³``, ``10⁻²``, ``1``, ``10``: a log tick label as plain text (no mathtext to lay out)."""
    if not x > 0:
        return "0" if x == 0 else ""
    e = round(math.log10(x))
    if abs(math.log10(x) - e) > 1e-9:
        return f"{x:g}"
    return {0: "1", 1: "10"}.get(e, "10" + str(e).translate(SUPERSCRIPT))


def _decades(ax: Axes, axis: str = "y") -> None:
    """Log ticks at whole decades only, labelled as plain text, no minor ticks."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, numticks=5))  # every other decade beyond 5
    target.set_major_formatter(FuncFormatter(_power_of_ten))
    target.set_minor_locator(NullLocator())




def _marker_indices(x: np.ndarray, index: int, n: int = MARKERS_PER_LINE) -> list[int]:
    """Where a line of points ``x`` (sorted, positive) carries markers: ``n`` points evenly spread
    on a log axis, shifted a little per estimator so that markers of different lines do not sit
    on top of each other."""
    if len(x) <= n:
        return list(range(len(x)))
    lx = np.log(x)
    span = lx[-1] - lx[0]
    if span <= 0:
        return [0]
    phase = ((index * 0.37) % 1.0 - 0.5) * 0.8
    targets = lx[0] + span * (np.arange(n) + 0.5 + phase) / n
    return sorted({int(np.argmin(np.abs(lx - t))) for t in targets})


def _outliers(values: Mapping[str, float]) -> set[str]:
    """Estimators whose value exceeds :data:`OUTLIER_FACTOR` × the median of the panel's values
    (values at round-off zero left out of the median; only among three or more)."""
    finite = {e: v for e, v in values.items() if v is not None and math.isfinite(v) and v > ROUND_OFF_ZERO}
    if len(finite) < 3:
        return set()
    med = float(np.median(list(finite.values())))
    return {e for e, v in finite.items() if v > OUTLIER_FACTOR * med}


def scale(panels: Sequence[Mapping[str, np.ndarray]], by: Callable[[np.ndarray], Any] = np.nanmax
          ) -> tuple[set[str], tuple[float, float] | None]:
    """The y range shared by a row of panels: ``panels`` holds, per panel, each estimator's values.

    Args:
        by: the value of a line that decides whether it is an outlier: its largest by default;
            curves against M pass ``np.nanmin``, their value at the most samples, so that a line
            that starts high and falls into the others' range is drawn (the axis extends to it),
            not left out for its first points.

    Returns:
        ``(outliers, limits)``: the estimators that are an outlier (:func:`_outliers`, by ``by``)
        in any panel, and log-axis limits over everyone else's values. A line whose values leave
        these limits is not drawn but named in its panel (:func:`_off_scale_note`).
    """
    off: set[str] = set()
    for panel in panels:
        off |= _outliers({e: float(by(v[~np.isnan(v)])) if (~np.isnan(v)).any() else math.nan
                          for e, v in panel.items()})
    keep = [v for panel in panels for e, v in panel.items() if e not in off]
    values = np.concatenate(keep) if keep else np.array([])
    return off, _log_limits(values[values > ROUND_OFF_ZERO]) if values.size else None


def _fits(values: np.ndarray, lim: tuple[float, float] | None) -> bool:
    v = values[np.isfinite(values)]
    return lim is None or v.size == 0 or float(v.max()) <= lim[1] * 1.0001


def legible(colour: Any, most: float = 0.35) -> tuple[float, float, float]:
    """``colour`` darkened, keeping its hue, until its relative luminance is at most ``most``: text
    in a family's pale colour (tanh's light green, disarm's lavender) reads on white."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    f = min(1.0, most / lum) if lum > 0 else 1.0
    return (r * f, g * f, b * f)


def _off_scale_note(ax: Axes, names: Mapping[str, float]) -> None:
    if not names:
        return
    items = [f"{e} ({_short(v)})" for e, v in names.items()]
    text = "off scale: " + _cut(items)
    ax.text(0.02, 0.98, text, transform=ax.transAxes, fontsize=6.5, va="top", ha="left",
            color="#7a2c00", bbox=dict(boxstyle="round,pad=0.2", fc="#fff3e0", ec="none", alpha=0.9),
            zorder=5)


def _cut(items: Sequence[str], limit: int = 2) -> str:
    """``a, b +3``: a panel note short enough to stay inside its panel."""
    return ", ".join(items[:limit]) + (f" +{len(items) - limit}" if len(items) > limit else "")


def _short(v: float) -> str:
    if not math.isfinite(v):
        return "∞" if v > 0 else "—"
    if v == 0:
        return "0"
    a = abs(v)
    if 0.01 <= a < 1000:
        return f"{v:.2g}" if a < 10 else f"{v:.0f}"
    return f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


# --------------------------------------------------------------------------------------------
# the headline heatmap


def unresolved_cells(rows: pd.DataFrame, metric: str = "rrmse", m: float = 1.0) -> int:
    """How many finite values of ``metric`` at M=``m`` in ``rows`` (the heatmap's: seeds combined)
    are not resolved (:attr:`~sbn_bench.reports.ranking.Estimate.resolved`: a standard error above
    the value, or a Monte-Carlo value whose error is unknown): the heatmap writes them with a
    ``?``, and the ranking does not rank them. (The run's summary,
    :meth:`sbn_bench.runner.RunResult.unresolved`, marks a value when any one seed's is.)"""
    data = rows[(rows["metric"] == metric) & (rows["M"] == m)]
    return sum(1 for r in data.itertuples()
               if (e := Estimate(float(r.value), float(r.stderr), str(r.mode),
                                 squared=metric in SQUARED_METRICS)).finite
               and not e.resolved)


def heatmap_figure(rows: pd.DataFrame, estimators: Sequence[str], sty: Mapping[str, Style],
                   checkpoints: Sequence[str], title: str, metric: str = "rrmse",
                   m: float = 1.0) -> Figure | None:
    """rrmse at M=``m`` for estimators (rows, grouped by family) × (checkpoint, layer) (columns).

    Colours on a log scale up to :data:`OUTLIER_FACTOR` × the median (beyond: the darkest colour,
    the colour bar's arrow); every value is written in its cell; the best of each column is boxed
    in black, its ties (within 2 standard errors) in dashed black (:mod:`~sbn_bench.reports.ranking`);
    a value whose standard error exceeds it or is unknown (not resolved: :func:`unresolved_cells`)
    is written in italics with a ``?``.
    """
    data = rows[(rows["metric"] == metric) & (rows["M"] == m)]
    if data.empty:
        return None
    ests = [e for e in by_family(list(estimators), {e: sty[e].family for e in estimators})
            if e in set(data["estimator"])]
    layers = sorted(set(data["layer"]), key=layer_key)
    cols = [(c, lay) for c in checkpoints for lay in layers
            if not data[(data["checkpoint"] == c) & (data["layer"] == lay)].empty]
    if not ests or not cols:
        return None
    idx = {(r.estimator, r.checkpoint, r.layer): Estimate(float(r.value), float(r.stderr), str(r.mode),
                                                          squared=metric in SQUARED_METRICS)
           for r in data.itertuples()}
    vals = np.full((len(ests), len(cols)), np.nan)
    for i, e in enumerate(ests):
        for j, (c, lay) in enumerate(cols):
            est = idx.get((e, c, lay))
            if est is not None and est.finite:
                vals[i, j] = est.value
    pos = vals[np.isfinite(vals) & (vals > 0)]
    if pos.size == 0:
        return None
    vmin = float(pos.min())
    vmax = float(min(pos.max(), OUTLIER_FACTOR * np.median(pos)))
    vmax = min(max(vmax, vmin * 10), sys.float_info.max)  # finite: matplotlib refuses inf
    cell_w, cell_h = 0.56, 0.27
    left = max(1.55, 0.2 + _text_inches(max(len(e) for e in ests), bold=True))
    right, top, bottom = 1.0, 0.62, 0.3
    w = left + cell_w * len(cols) + right
    h = top + cell_h * len(ests) + bottom
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / w, bottom / h, cell_w * len(cols) / w, cell_h * len(ests) / h))
    cmap = mpl.colormaps["viridis_r"].with_extremes(bad="#f0f0f0")
    norm = LogNorm(vmin=vmin, vmax=vmax, clip=False)
    masked = np.ma.masked_invalid(np.where(vals > 0, vals, np.nan))
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.grid(False)
    for j, (c, lay) in enumerate(cols):
        ranking = rank([idx.get((e, c, lay)) if sty[e].family not in UNRANKED_FAMILIES else None
                        for e in ests], "low")
        for i in range(len(ests)):
            v = vals[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "—", ha="center", va="center", fontsize=6.5, color="#777777")
                continue
            shade = norm(min(max(v, vmin), vmax)) if v > 0 else 0.0
            colour = "white" if shade > 0.55 else "black"
            r = ranking.ranks[i] if sty[ests[i]].family not in UNRANKED_FAMILIES else ""
            est = idx[(ests[i], c, lay)]
            vague = not est.resolved  # its standard error exceeds it, or is unknown
            ax.text(j, i, _short(v) + ("?" if vague else ""), ha="center", va="center",
                    fontsize=6.5, color=colour, fontweight="bold" if r == "best" else "normal",
                    fontstyle="italic" if vague else "normal")
            if r in ("best", "tie"):
                ax.add_patch(Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, ec="black",
                                       lw=1.3 if r == "best" else 0.9,
                                       ls="-" if r == "best" else (0, (2, 1.5))))
    ax.set_xticks(range(len(cols)), [lay if lay.isdigit() else lay for _, lay in cols], fontsize=7)
    ax.set_yticks(range(len(ests)), ests, fontsize=7.5)
    for lab, e in zip(ax.get_yticklabels(), ests):
        lab.set_color(legible(sty[e].colour))
        lab.set_fontweight("bold")
    ax.tick_params(length=0)
    # checkpoint groups: a label above each, white separators between them
    starts = [j for j in range(len(cols)) if j == 0 or cols[j][0] != cols[j - 1][0]]
    for k, j0 in enumerate(starts):
        j1 = (starts[k + 1] if k + 1 < len(starts) else len(cols)) - 1
        ax.text((j0 + j1) / 2, -0.6, cols[j0][0], ha="center", va="bottom", fontsize=8,
                fontweight="bold")
        if j0 > 0:
            ax.axvline(j0 - 0.5, color="white", lw=3)
    # family separators
    fams = [sty[e].family for e in ests]
    for i in range(1, len(ests)):
        if fams[i] != fams[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=2)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(ests) - 0.5, -0.5)
    cax = fig.add_axes(((left + cell_w * len(cols) + 0.2) / w, bottom / h, 0.14 / w,
                        cell_h * len(ests) / h))
    extend = "max" if pos.max() > vmax else "neither"
    cb = fig.colorbar(im, cax=cax, extend=extend)
    cb.set_label(f"{metric} at M={m:g} (log)", fontsize=7.5)
    cb.ax.tick_params(labelsize=7)
    cb.ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    fig.suptitle(title, x=left / w, ha="left", y=1 - 0.08 / h, va="top", fontsize=9.5)
    return fig


# --------------------------------------------------------------------------------------------
# lines against M, per checkpoint


Curve = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(M, value, stderr)`` of one estimator in one layer, sorted by M (stderr 0 where unknown)."""


ROUNDOFF_RRMSE = 1e-5
"""An rrmse at or below this at every M is round-off: the estimators get the layer exactly (the
binary VAE's prior, whose gradient is the analytic KL's in every estimate), nothing to draw."""


def figure_layers(rows: pd.DataFrame, layers: Sequence[str]) -> list[str]:
    """The layers (parameter groups) a figure shows, in order: every group but one that every
    estimator gets to round-off (:data:`ROUNDOFF_RRMSE`), and but the output layer of a network
    with several stochastic layers (pathwise for almost every estimator there: the lines coincide;
    the tables and the story show it). With one stochastic layer (the VAE's decoder, a classifier's
    head) the output layer is shown."""
    rr = rows[(rows["metric"] == "rrmse") & rows["layer"].isin(list(layers))]
    exact = {str(lay) for lay, g in rr.groupby("layer")
             if len(g) and bool((g["value"].astype(float) <= ROUNDOFF_RRMSE).all())}
    shown = [lay for lay in layers if lay == "all" or lay not in exact]
    if sum(1 for lay in shown if lay.isdigit()) >= 2 and "out" in shown:
        shown.remove("out")
    return shown


def curves(rows: pd.DataFrame, metric: str) -> dict[tuple[str, str], Curve]:
    """``{(layer, estimator): (M, value, stderr)}`` for one metric: one pass over the rows."""
    d = rows[(rows["metric"] == metric) & rows["M"].notna()].sort_values(["layer", "estimator", "M"])
    keys = list(zip(d["layer"].to_numpy(), d["estimator"].to_numpy()))
    m, v = d["M"].to_numpy(float), d["value"].to_numpy(float)
    se = np.nan_to_num(d["stderr"].to_numpy(float))
    out: dict[tuple[str, str], Curve] = {}
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out[keys[start]] = (m[start:i], v[start:i], se[start:i])
            start = i
    return out


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, st: Style, index: int,
          bars: list | None = None, lo: np.ndarray | None = None, hi: np.ndarray | None = None
          ) -> None:
    """One line with markers at a few points; its uncertainty bars at those points are appended
    to ``bars`` (drawn afterwards as one collection per panel)."""
    marks = _marker_indices(x, index)
    ax.plot(x, y, color=st.colour, linestyle=st.dash, linewidth=1.4, marker=st.marker,
            markevery=marks, markersize=4.2, markeredgewidth=0.5, markeredgecolor="white")
    if bars is not None and lo is not None and hi is not None:
        for k in marks:
            if np.isfinite(lo[k]) and np.isfinite(hi[k]) and hi[k] > lo[k]:
                bars.append((((x[k], lo[k]), (x[k], hi[k])), st.colour))


def _draw_bars(ax: Axes, bars: list) -> None:
    if bars:
        ax.add_collection(LineCollection([b[0] for b in bars], colors=[b[1] for b in bars],
                                         linewidths=0.9, alpha=0.85), autolim=False)


def accuracy_limits(rows: pd.DataFrame) -> dict[str, tuple[float, float] | None]:
    """Shared y limits of :func:`accuracy_figure` over all checkpoints of a problem (outliers left
    out, :func:`scale`): ``{"rrmse": (lo, hi), "cosine": (lo, hi)}``."""
    panels = []
    for _ck, g in rows.groupby("checkpoint", sort=False):
        cs = curves(g, "rrmse")
        for layer in dict.fromkeys(lay for lay, _ in cs):
            panels.append({e: c[1] for (lay, e), c in cs.items() if lay == layer})
    cos = rows[rows["metric"].isin(["cosine_mean", "cosine_p15", "cosine_p85"]) & rows["M"].notna()]
    gap = 1 - cos["value"].to_numpy(float)
    # 1 − cos at round-off (the exact estimator's, ~1e-16) would stretch the axis over eight decades
    return {"rrmse": scale(panels, by=np.nanmin)[1],
            "cosine": _log_limits(gap[gap > ROUND_OFF_ZERO]) if not cos.empty else None}


def _group_labels(fig: Figure, axes: np.ndarray, groups: Sequence[Sequence[str]], per_group: int,
                  sty: Mapping[str, Style]) -> None:
    """Small multiples: the families of each group of rows, written down the figure's left edge
    beside its ``per_group`` rows (the one legend alone did not say which row holds which)."""
    w, h = fig.get_size_inches()
    for gi, group in enumerate(groups):
        top, bottom = axes[gi * per_group, 0].get_position(), axes[(gi + 1) * per_group - 1, 0].get_position()
        fams = " · ".join(dict.fromkeys(sty[e].family for e in group))
        chars = max(20, int((top.y1 - bottom.y0) * h / _text_inches(1)))  # that fit the rows' height
        text = textwrap.fill(fams, chars, break_on_hyphens=False)
        fig.text(0.14 / w, (top.y1 + bottom.y0) / 2, text, rotation=90, ha="center", va="center",
                 fontsize=7.5, color="#333333", linespacing=1.1)


def accuracy_figure(rows: pd.DataFrame, estimators: Sequence[str], sty: Mapping[str, Style],
                    title: str, limits: Mapping[str, tuple[float, float] | None] | None = None
                    ) -> Figure | None:
    """rrmse(M) (log-log, bars ±2 standard errors) and ``1 − cos(ḡ_M, g)`` (log-log, bars from
    the 15th to the 85th percentile) per layer (the stochastic layers and all parameters; the
    output layer only when there is little else), bars at the marked points only; one row of panels
    per group of at most :data:`MAX_LINES` estimators (whole families). ``limits``
    (:func:`accuracy_limits`) fixes the y axes so that the checkpoints of a problem share them."""
    rr = curves(rows, "rrmse")
    cm, c15, c85 = (curves(rows, m) for m in ("cosine_mean", "cosine_p15", "cosine_p85"))
    if not rr and not cm:
        return None
    limits = dict(limits) if limits is not None else accuracy_limits(rows)
    present = [e for e in estimators if e in {k[1] for k in (*rr, *cm)}]
    groups = panel_groups(present, {e: sty[e].family for e in present}, MAX_LINES)
    layers = sorted({k[0] for k in (*rr, *cm)}, key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    layers = figure_layers(rows, layers)
    kinds = [k for k, d in (("rrmse", rr), ("cosine", cm)) if d]
    nrows = len(kinds) * len(groups)
    fig, axes = _grid(nrows, len(layers), sharex=True, sharey="row", title=title,
                      right=_legend_room(present), left=1.05 if len(groups) > 1 else 0.75)
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_yscale("log")
    if len(groups) > 1:
        _group_labels(fig, axes, groups, len(kinds), sty)
    _decades(axes[0, 0], "x")
    for r in range(nrows):
        _decades(axes[r, 0], "y")
    for gi, group in enumerate(groups):
        for ki, kind in enumerate(kinds):
            r = gi * len(kinds) + ki
            for c, layer in enumerate(layers):
                ax = axes[r, c]
                off: dict[str, float] = {}
                bars: list = []
                if kind == "rrmse":
                    for e in group:
                        if (layer, e) not in rr:
                            continue
                        m, y, se = rr[(layer, e)]
                        if not (y > ROUNDOFF_RRMSE).any():  # the exact gradient: 0, no place on a log axis
                            off[e] = 0.0
                            continue
                        if not _fits(y, limits.get("rrmse")):
                            off[e] = float(np.nanmax(y))
                            continue
                        with np.errstate(over="ignore", invalid="ignore"):  # an unresolved
                            lo, hi = y - 2 * se, y + 2 * se  # layer's error is ∞ (bar off the axes)
                        _line(ax, m, y, sty[e], present.index(e), bars, lo, hi)
                else:
                    for e in group:
                        if (layer, e) not in cm:
                            continue
                        m, mean, _ = cm[(layer, e)]
                        if not (1 - mean > ROUND_OFF_ZERO).any():  # at round-off: the exact gradient
                            off[e] = 0.0
                            continue
                        y = np.where(1 - mean > 0, 1 - mean, np.nan)
                        lo = hi = None
                        if (layer, e) in c85 and (layer, e) in c15 and len(c85[(layer, e)][1]) == len(m):
                            lo, hi = 1 - c85[(layer, e)][1], 1 - c15[(layer, e)][1]
                            lo = np.where(lo > 0, lo, np.nan)
                        _line(ax, m, y, sty[e], present.index(e), bars, lo, hi)
                _draw_bars(ax, bars)
                lim = limits.get(kind)
                if lim is not None:
                    ax.set_ylim(*lim)
                _off_scale_note(ax, off)
                if c == 0:
                    ax.set_ylabel("rrmse(M), log" if kind == "rrmse" else "1 − cos(ḡ_M, g), log")
                if r == 0:
                    ax.set_title(_layer_title(layer, n_layers))
                if r == nrows - 1:
                    ax.set_xlabel("M, samples averaged")
    extra = [Line2D([], [], color="grey", marker="|", linestyle="none", markersize=8,
                    label="bars: ±2 s.e. (rrmse),\n15–85th pct. (1 − cos)")]
    _legend(fig, by_family(present, {e: sty[e].family for e in present}), sty, extra)
    return fig


# --------------------------------------------------------------------------------------------
# the story across checkpoints


ROUND_OFF_ZERO = 1e-8
"""Relative values below this are zero to working precision (e.g. the bias of an unbiased
estimator in exact mode, ~1e-14): drawn at the bottom of a log axis as ``≈0``, not stretching it."""


def _by_checkpoint(rows: pd.DataFrame, metric: str, m: float | None, xpos: Mapping[str, float]
                   ) -> dict[tuple[str, str], Curve]:
    """``{(layer, estimator): (x, value, stderr)}`` of one metric across checkpoints."""
    sel = rows[(rows["metric"] == metric) & ((rows["M"] == m) if m is not None else rows["M"].isna())]
    sel = sel.assign(M=sel["checkpoint"].map(xpos)).dropna(subset=["M"])
    return curves(sel.assign(metric=metric), metric)


def story_figure(rows: pd.DataFrame, estimators: Sequence[str], sty: Mapping[str, Style],
                 checkpoints: Sequence[str], title: str) -> Figure | None:
    """rrmse at M=1 and relative bias against the training epoch (or checkpoint order) per layer,
    one line per estimator; bars ±2 standard errors where the values are Monte Carlo (a bias
    clipped at zero shows as its bar alone, up to its upper bound)."""
    if len(checkpoints) < 2:
        return None
    xs, xlabel = checkpoint_axis(checkpoints)
    xpos = dict(zip(checkpoints, xs))
    kinds = [(k, d) for k, d in (("rrmse at M=1", _by_checkpoint(rows, "rrmse", 1.0, xpos)),
                                 ("relative bias", _by_checkpoint(rows, "rel_bias", None, xpos))) if d]
    if not kinds:
        return None
    present = [e for e in estimators if e in {k[1] for _, d in kinds for k in d}]
    groups = panel_groups(present, {e: sty[e].family for e in present}, MAX_LINES)
    layers = sorted({k[0] for _, d in kinds for k in d}, key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    log_x = xlabel == "training epoch" and min(xs) > 0 and max(xs) / min(xs) >= 20
    nrows = len(kinds) * len(groups)
    fig, axes = _grid(nrows, len(layers), panel=(2.3, 1.8), sharex=True, sharey="row", title=title,
                      right=_legend_room(present), left=1.05 if len(groups) > 1 else 0.75)
    if len(groups) > 1:
        _group_labels(fig, axes, groups, len(kinds), sty)
    for ax in axes.ravel():
        ax.set_yscale("log")
        if log_x:
            ax.set_xscale("log")
    ax0 = axes[0, 0]
    if log_x:
        ax0.xaxis.set_major_locator(mpl.ticker.FixedLocator(xs))
        ax0.xaxis.set_minor_locator(NullLocator())
        ax0.xaxis.set_major_formatter(mpl.ticker.FixedFormatter([f"{x:g}" for x in xs]))
        ax0.set_xlim(min(xs) / 1.8, max(xs) * 1.8)
    else:
        ax0.set_xticks(xs, [f"{x:g}" for x in xs] if xlabel == "training epoch" else list(checkpoints))
        pad = 0.3 * (max(xs) - min(xs)) / max(len(xs) - 1, 1)
        ax0.set_xlim(min(xs) - pad, max(xs) + pad)
    for ki, (kind, data) in enumerate(kinds):
        # outliers per (checkpoint, layer), then one y range for the whole row
        panels = [{e: c[1][c[0] == x] for (lay, e), c in data.items() if lay == layer}
                  for layer in layers for x in xs]
        _off, lim = scale(panels)
        for r0 in range(len(groups)):
            _decades(axes[r0 * len(kinds) + ki, 0], "y")
        for gi, group in enumerate(groups):
            r = gi * len(kinds) + ki
            for c, layer in enumerate(layers):
                ax = axes[r, c]
                off: dict[str, float] = {}
                zero: list[str] = []
                bars: list = []
                for e in group:
                    if (layer, e) not in data:
                        continue
                    x, y, se = data[(layer, e)]
                    if not _fits(y, lim):
                        off[e] = float(np.nanmax(y))
                        continue
                    exact_zero = (y < ROUND_OFF_ZERO) & (se == 0)
                    if exact_zero.all():
                        zero.append(e)
                    ax.plot(x, np.where(y > ROUND_OFF_ZERO, y, np.nan), color=sty[e].colour,
                            linestyle=sty[e].dash, marker=sty[e].marker, markersize=4.2, linewidth=1.4,
                            markeredgewidth=0.5, markeredgecolor="white")
                    floor = lim[0] if lim else 1e-300
                    for k in range(len(x)):
                        if se[k] > 0:
                            bars.append((((x[k], max(y[k] - 2 * se[k], floor)), (x[k], y[k] + 2 * se[k])),
                                         sty[e].colour))
                _draw_bars(ax, bars)
                if lim is not None:
                    ax.set_ylim(*lim)
                note = {**off}
                _off_scale_note(ax, note)
                if zero:
                    what = "≈0, unbiased in this layer:\n" if kind == "relative bias" else "≈0: "
                    ax.text(0.02, 0.02, f"{what}{_cut(zero, 2)}", transform=ax.transAxes,
                            fontsize=6.2, color="#555555", va="bottom", ha="left", zorder=5,
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
                if c == 0:
                    ax.set_ylabel(f"{kind}, log")
                if r == 0:
                    ax.set_title(_layer_title(layer, n_layers))
                if r == nrows - 1:
                    ax.set_xlabel(xlabel)
    _legend(fig, by_family(present, {e: sty[e].family for e in present}), sty,
            [Line2D([], [], color="grey", marker="|", linestyle="none", markersize=8,
                    label="bars: ±2 s.e. (Monte Carlo)")])
    return fig


# --------------------------------------------------------------------------------------------
# bias against standard deviation


def bias_variance_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (checkpoint, layer, estimator): ``rel_bias`` and the relative standard deviation ``√V/‖g‖``.

    ``‖g‖`` is not stored; it follows from ``rrmse(M) = √(‖β‖² + V/M)/‖g‖`` (SPEC §5) at the
    smallest M present: ``‖g‖ = √(bias_norm² + V/M) / rrmse(M)``. Groups whose ``‖g‖`` cannot be
    recovered (rrmse 0, e.g. the exact estimator) are left out. ``unresolved``: a Monte-Carlo
    relative bias not significantly above zero (at most ``TIE_Z`` standard errors, or clipped at 0),
    whose tables show an upper bound (:func:`~sbn_bench.reports.ranking.upper_bound`).
    """
    keys = ["checkpoint", "layer", "estimator"] if "checkpoint" in rows.columns else ["layer", "estimator"]
    columns = [*keys, "rel_bias", "rel_sd", "unresolved"]
    scalars = rows[rows["M"].isna() & rows["metric"].isin(["variance", "bias_norm", "rel_bias"])]
    rr = rows[(rows["metric"] == "rrmse") & rows["M"].notna()].sort_values("M", kind="stable")
    if scalars.empty or rr.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("rel_bias", "rel_sd") else
                                          bool if c == "unresolved" else object) for c in columns})
    wide = scalars.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    first = rr.drop_duplicates(keys).set_index(keys)[["M", "value"]]
    df = wide.join(first, how="inner").dropna(subset=["variance", "bias_norm", "rel_bias"])
    V = df["variance"].clip(lower=0.0)
    bn = df["bias_norm"].clip(lower=0.0)
    gnorm = np.sqrt(bn**2 + V / df["M"]) / df["value"].where(df["value"] > 0)
    df = df.assign(rel_sd=np.sqrt(V) / gnorm.where(gnorm > 0))
    # a Monte-Carlo bias not significantly above zero (clipped at 0, or its square within TIE_Z
    # standard errors of 0): unresolved, where the tables show its upper bound (upper_bound)
    # (judged by the bias_norm row: against a Monte-Carlo reference rel_bias's error also carries
    # ‖g‖'s, which has nothing to do with whether β = 0)
    if "stderr" in scalars.columns:
        se = scalars[scalars["metric"] == "bias_norm"].set_index(keys)["stderr"]
        se = se[~se.index.duplicated()].reindex(df.index).fillna(0.0)
    else:
        se = pd.Series(0.0, index=df.index)
    df = df.assign(unresolved=[upper_bound(Estimate(float(v), float(u), squared=True)) is not None
                               for v, u in zip(df["bias_norm"], se)])
    df = df[df["value"] > 0].reset_index()
    # an empty frame (e.g. only zero-error estimators, whose ‖g‖ cannot be recovered) has object
    # columns, which numpy's isfinite refuses
    return df[columns].astype({"rel_bias": float, "rel_sd": float, "unresolved": bool})


def label_points(ax: Axes, xs: np.ndarray, ys: np.ndarray, texts: Sequence[str],
                 colours: Sequence, fontsize: float = 6.5) -> list[tuple[float, float, float, float]]:
    """Label every point, each label placed at the first free spot around its point (nearest
    first, right before left) and joined to it by a thin leader line when it is not right beside
    it. Labels never overlap each other nor cover a point when there is room; the axes' limits and
    the figure's size must be final (they are: fixed layout). Returns the label boxes in pixels
    ``(x0, y0, x1, y1)``."""
    fig = ax.figure
    px = ax.transData.transform(np.column_stack([xs, ys]))
    bbox = ax.get_window_extent()
    scale_pt = fig.dpi / 72
    char_w, line_h = fontsize * scale_pt * 0.58, fontsize * scale_pt * 1.2
    placed: list[tuple[float, float, float, float]] = []
    points = [(p[0] - 3.5, p[1] - 3.5, p[0] + 3.5, p[1] + 3.5) for p in px]

    def free(box: tuple[float, float, float, float]) -> bool:
        x0, y0, x1, y1 = box
        if x0 < bbox.x0 + 1 or x1 > bbox.x1 - 1 or y0 < bbox.y0 + 1 or y1 > bbox.y1 - 1:
            return False
        return all(x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0 for a0, b0, a1, b1 in placed + points)

    angles = (0, 25, -25, 55, -55, 90, -90, 180, 155, -155, 125, -125)
    inverse = ax.transData.inverted()
    leaders, leader_colours = [], []
    for i in np.lexsort((-px[:, 1], px[:, 0])):
        w = char_w * len(texts[i]) + 2
        chosen = None
        for radius in (7, 16, 28, 42, 60, 82):
            for a in angles:
                dx, dy = radius * math.cos(math.radians(a)), radius * math.sin(math.radians(a))
                x0 = px[i, 0] + dx if dx >= -1e-9 else px[i, 0] + dx - w
                box = (x0, px[i, 1] + dy - line_h / 2, x0 + w, px[i, 1] + dy + line_h / 2)
                if free(box):
                    chosen = (box, radius)
                    break
            if chosen:
                break
        if chosen is None:  # nowhere free: to the right, overlapping if need be
            chosen = ((px[i, 0] + 7, px[i, 1] - line_h / 2, px[i, 0] + 7 + w, px[i, 1] + line_h / 2), 7)
        box, radius = chosen
        placed.append(box)
        right = box[2] <= px[i, 0]
        anchor = (box[2] if right else box[0], (box[1] + box[3]) / 2)
        tx, ty = inverse.transform(anchor)
        ax.text(tx, ty, texts[i], fontsize=fontsize, color=colours[i], ha="right" if right else "left",
                va="center", clip_on=False)
        if radius > 7:
            gap = 2.0 if right else -2.0
            end = inverse.transform((anchor[0] + gap, anchor[1]))
            leaders.append([(xs[i], ys[i]), tuple(end)])
            leader_colours.append(colours[i])
    if leaders:
        ax.add_collection(LineCollection(leaders, colors=leader_colours, linewidths=0.6, alpha=0.8,
                                         zorder=2), autolim=False)
    return placed


def _symlog_ticks(lin: float, hi: float, most: int = 5) -> list[float]:
    """0 and the decades from ``lin`` up to ``hi``, every other one when there are more than
    ``most`` (every tick is an object matplotlib builds and lays out: few keep figures fast)."""
    lo_e, hi_e = round(math.log10(lin)), math.floor(math.log10(hi))
    decades = list(range(lo_e, hi_e + 1))
    step = 1 if len(decades) <= most else 2
    return [0.0, *(10.0 ** e for e in decades[::-1][::step][::-1])]


def bias_variance_figure(rows: pd.DataFrame, estimators: Sequence[str], sty: Mapping[str, Style],
                         checkpoints: Sequence[str], title: str) -> Figure | None:
    """Relative bias against relative standard deviation of one sample (symlog axes, shared by
    every panel), one row per checkpoint (per checkpoint and group of whole families when there are
    more than :data:`MAX_LINES` estimators: the others then grey, for context) and one column per
    layer (the stochastic layers and all parameters; the output layer, where nearly every estimator
    is pathwise, only when there is little else), every point labelled (with a leader line when the
    label sits away from it)."""
    bv = bias_variance_frame(rows)
    bv = bv[np.isfinite(bv["rel_sd"]) & np.isfinite(bv["rel_bias"])]
    if bv.empty:
        return None
    if "checkpoint" not in bv.columns:
        bv = bv.assign(checkpoint=checkpoints[0] if checkpoints else "")
    ckpts = [c for c in checkpoints if c in set(bv["checkpoint"])] or list(dict.fromkeys(bv["checkpoint"]))
    layers = sorted(set(bv["layer"]), key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    layers = figure_layers(rows, layers)
    bv = bv[bv["layer"].isin(layers)]
    size = np.maximum(bv["rel_sd"].to_numpy(float), bv["rel_bias"].to_numpy(float))
    panels = [{e: size[(bv["checkpoint"] == ck).to_numpy() & (bv["layer"] == lay).to_numpy()
                       & (bv["estimator"] == e).to_numpy()] for e in dict.fromkeys(bv["estimator"])}
              for ck in ckpts for lay in layers]
    _off, lim = scale(panels)
    hi_all = lim[1] if lim is not None else 10.0
    fits = size <= hi_all
    shown = bv[fits]
    pos_b = shown["rel_bias"][shown["rel_bias"] > ROUND_OFF_ZERO]
    pos_s = shown["rel_sd"][shown["rel_sd"] > ROUND_OFF_ZERO]
    y_lin = max(10.0 ** math.floor(math.log10(pos_b.min())), 1e-3) if not pos_b.empty else 1e-3
    x_lin = 10.0 ** math.floor(math.log10(pos_s.min())) if not pos_s.empty else 1e-3
    x_hi = min(float(pos_s.max()) * 2.5, sys.float_info.max) if not pos_s.empty else 10.0
    y_hi = min(float(max(pos_b.max() if not pos_b.empty else 1.0, y_lin * 10)) * 2.5, sys.float_info.max)
    present = [e for e in estimators if e in set(bv["estimator"])]
    groups = panel_groups(present, {e: sty[e].family for e in present}, MAX_LINES)
    rows_spec = [(ck, g) for ck in ckpts for g in groups]
    fig, axes = _grid(len(rows_spec), len(layers), panel=(2.5, 2.1), sharex=True, sharey=True,
                      title=title, hgap=0.5, left=1.05, right=_legend_room(present))
    for ax in axes.ravel():
        ax.set_xscale("symlog", linthresh=x_lin, linscale=0.4)
        ax.set_yscale("symlog", linthresh=y_lin, linscale=0.4)
    ax0 = axes[0, 0]
    ax0.set_xlim(0, x_hi)
    ax0.set_ylim(0, y_hi)
    ax0.xaxis.set_major_locator(mpl.ticker.FixedLocator(_symlog_ticks(x_lin, x_hi)))
    ax0.yaxis.set_major_locator(mpl.ticker.FixedLocator(_symlog_ticks(y_lin, y_hi)))
    for axis in (ax0.xaxis, ax0.yaxis):
        axis.set_major_formatter(FuncFormatter(_power_of_ten))
        axis.set_minor_locator(NullLocator())
    start = max(x_lin, y_lin)
    diag = np.geomspace(start, min(x_hi, y_hi), 12) if start < min(x_hi, y_hi) else None
    est_order = {e: i for i, e in enumerate(estimators)}
    for r, (ck, group) in enumerate(rows_spec):
        members = set(group)
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            if diag is not None:
                ax.plot(diag, diag, color="grey", linestyle="--", linewidth=0.8)
            sel = ((bv["checkpoint"] == ck) & (bv["layer"] == layer)).to_numpy()
            panel = bv[sel]
            ok = fits[sel]
            mine = panel["estimator"].isin(members).to_numpy()
            off = {e: float(max(sd, b)) for e, sd, b, f, m in zip(
                panel["estimator"], panel["rel_sd"], panel["rel_bias"], ok, mine) if not f and m}
            if len(groups) > 1:  # the other groups' points, in grey, for context
                rest = panel[ok & ~mine]
                ax.plot(rest["rel_sd"], rest["rel_bias"], linestyle="none", marker="o", markersize=2.5,
                        color="#c8c8c8", zorder=2, clip_on=False)
            sub = panel[ok & mine].sort_values("estimator", kind="stable", key=lambda s: s.map(est_order))
            for e, x, y, clip in zip(sub["estimator"], sub["rel_sd"], sub["rel_bias"], sub["unresolved"]):
                # hollow: a Monte-Carlo bias not resolved from zero, not a measured bias
                ax.plot([x], [y], linestyle="none", color=sty[e].colour, marker=sty[e].marker,
                        markersize=5, markeredgecolor=sty[e].colour if clip else "white",
                        markerfacecolor="none" if clip else sty[e].colour,
                        markeredgewidth=1.0 if clip else 0.4, zorder=3, clip_on=False)
            if r == 0:
                ax.set_title(_layer_title(layer, n_layers))
            if c == 0:
                ax.set_ylabel(f"{ck}\nrel. bias ‖β‖/‖g‖")
            if r == len(rows_spec) - 1:
                ax.set_xlabel("rel. std. dev. √V/‖g‖")
            if not sub.empty:
                label_points(ax, sub["rel_sd"].to_numpy(float), sub["rel_bias"].to_numpy(float),
                             list(sub["estimator"]), [sty[e].colour for e in sub["estimator"]])
            _off_scale_note(ax, off)
    extra = [Line2D([], [], color="grey", linestyle="--", label="bias = std. dev.")]
    if len(groups) > 1:
        extra.append(Line2D([], [], color="#c8c8c8", marker="o", linestyle="none", markersize=3,
                            label="other rows' estimators"))
    _legend(fig, by_family(present, {e: sty[e].family for e in present}), sty, extra)
    fig.text(0.01, 0.005, f"symlog axes: linear below {x_lin:g} (x) and {y_lin:g} (y), log above; "
             "a filled marker at bias 0 is zero to round-off; a hollow one a Monte-Carlo bias not "
             "significantly above 0 (its square within 2 s.e. of 0, or clipped at 0): the tables give "
             "its upper bound",
             fontsize=6.5, color="#555555")
    return fig


# --------------------------------------------------------------------------------------------
# throughput


def throughput_figure(tp: pd.DataFrame, estimators: Sequence[str], sty: Mapping[str, Style],
                      title: str) -> Figure | None:
    """Median samples/s per estimator (over checkpoints when measured at several), horizontal bars
    (dots where the axis is logarithmic: a bar's length would start at an arbitrary edge there),
    whiskers from the lowest to the highest bound of the confidence interval of the median over
    interleaved rounds (schema-1 runs: the 25th and 75th percentiles of the timed rounds); an
    estimator whose interval is wider than the target is labelled ``(wide)``."""
    if tp.empty:
        return None
    order = [e for e in by_family([e for e in estimators if e in set(tp["estimator"])],
                                  {e: sty[e].family for e in estimators})]
    if not order:
        return None
    g = tp.groupby("estimator")
    y = g["samples_per_s"].median().reindex(order).to_numpy(float)
    lo = g["samples_per_s_lo"].min().reindex(order).to_numpy(float)
    hi = g["samples_per_s_hi"].max().reindex(order).to_numpy(float)
    schema1 = "ci_level" not in tp.columns or not np.isfinite(
        pd.to_numeric(tp["ci_level"], errors="coerce").to_numpy(float)).any()
    wide = {r["estimator"] for _, r in tp.iterrows() if is_wide(r)}
    whiskers = "25th–75th percentile" if schema1 else "confidence interval of the median"
    devices = ", ".join(sorted({f"{d} {t}".strip() for d, t in zip(tp["device"], tp["dtype"])}))
    h = 0.4 + 0.22 * len(order) + 0.5  # title 0.4 in, bars, x axis and its label 0.5 in
    labels = [f"{e} (wide)" if e in wide else e for e in order]
    left = max(1.7, 0.2 + _text_inches(max(len(t) for t in labels)))
    w = left + 5.5
    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / w, 0.5 / h, 5.2 / w, 0.22 * len(order) / h))
    pos = np.arange(len(order))
    finite = y[np.isfinite(y) & (y > 0)]
    log = bool(finite.size and finite.max() / finite.min() > 30)
    colours = [sty[e].colour for e in order]
    if log:  # a dot per estimator: a bar's length on a log axis starts at an arbitrary edge
        ax.scatter(y, pos, c=colours, s=36, zorder=3, edgecolors="white", linewidths=0.6)
    else:
        ax.barh(pos, y, color=colours, height=0.7)
    err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
    ax.errorbar(y, pos, xerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2.5,
                linewidth=0.9, zorder=2)
    ax.set_yticks(pos, labels)
    for lab, e in zip(ax.get_yticklabels(), order):
        lab.set_color(legible(sty[e].colour))
    ax.set_ylim(len(order) - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
        ax.set_xlabel(f"samples/s, median over timed rounds (log); whiskers: {whiskers}")
        # guides from label to dot, and the log axis' minor lines
        ax.grid(axis="y", visible=True, color="#eeeeee", linewidth=0.6)
        ax.grid(axis="x", which="both", visible=True, color="#e4e4e4", linewidth=0.5)
    else:
        ax.set_xlabel(f"samples/s, median over timed rounds; whiskers: {whiskers}")
        ax.xaxis.set_major_formatter(mpl.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.grid(axis="y", visible=False)
    fig.suptitle(f"{title} — {devices}", x=left / w, ha="left", y=1 - 0.1 / h, va="top", fontsize=9.5)
    return fig


def draw(fn: Callable[..., Figure | None], *args: Any, **kwargs: Any) -> Figure | None:
    """Call a figure function inside the report's matplotlib settings (:data:`RC`)."""
    with mpl.rc_context(RC):
        return fn(*args, **kwargs)
