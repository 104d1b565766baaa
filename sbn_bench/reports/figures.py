"""The report's seaborn figures, one set per (problem, checkpoint), written as PNG.

* rrmse vs M per layer (log-log, one line per estimator) — the paper's Figure (SPEC §6);
* cosine ``cos(ḡ_M, g)`` vs M per layer, the mean with its 15–85th percentile band;
* bias–variance scatter per layer: relative bias ``‖β‖/‖g‖`` against relative standard deviation
  ``√V/‖g‖`` of one sample, each point labelled with its estimator;
* throughput bars: median samples/s per estimator with its confidence interval over timed rounds.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot, no
global backend switch), so reports can be rendered from any process, headless or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import StrMethodFormatter, SymmetricalLogLocator

from sbn_bench.metrics import layer_key
from sbn_bench.reports.load import Run
from sbn_bench.reports.tables import cell_label, cell_rows, slug

DPI = 110
FIGURE_KINDS = ("rrmse", "cosine", "bias_variance", "throughput")
FACET_SIZE = (3.6, 3.0)


@dataclass(frozen=True)
class FigureFile:
    """A written figure: its path, a caption, and the (problem, checkpoint) it shows."""

    path: Path
    caption: str
    kind: str
    problem: str
    checkpoint: str


def palette(estimators: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per estimator, the same in every figure of a report."""
    colours = sns.color_palette("colorblind" if len(estimators) <= 10 else "husl", len(estimators))
    return dict(zip(estimators, colours))


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _markers(estimators: Sequence[str]) -> dict[str, str]:
    return {e: MARKERS[i % len(MARKERS)] for i, e in enumerate(estimators)}


def _facets(n: int, suptitle: str) -> tuple[Figure, list]:
    ncols = n if n <= 3 else math.ceil(n / 2)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(FACET_SIZE[0] * ncols + 1.8, FACET_SIZE[1] * nrows + 0.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle(suptitle, fontsize=12)
    return fig, axes[:n]


def _legend(fig: Figure, estimators: Sequence[str], pal: dict, marks: dict, extra: Sequence = (),
            shown: Sequence[str] | None = None) -> None:
    """One figure legend listing every estimator drawn (``shown``; all of ``estimators`` if None)."""
    keep = set(estimators if shown is None else shown)
    handles = [Line2D([], [], color=pal[e], marker=marks[e], label=e, linewidth=1.6)
               for e in estimators if e in keep]
    handles += list(extra)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="estimator", fontsize=9, title_fontsize=9)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})


def _layer_title(layer: str, n_layers: int) -> str:
    if layer.isdigit():
        return f"layer {layer} (of {n_layers} stochastic)"
    return {"out": "output layer", "all": "all parameters"}.get(layer, layer)


def _lines_vs_m(ax: Axes, sub: pd.DataFrame, y: str, estimators: Sequence[str],
                pal: dict[str, tuple[float, float, float]], marks: dict[str, str]) -> list[str]:
    """One line per estimator of ``y`` against ``M`` on ``ax`` (colours and markers fixed per
    estimator across figures); returns the estimators drawn, in ``estimators`` order."""
    present = [e for e in estimators if e in set(sub["estimator"])]
    sns.lineplot(data=sub, x="M", y=y, hue="estimator", hue_order=present, style="estimator",
                 style_order=present, markers=marks, dashes=False, palette=pal, ax=ax,
                 legend=False, errorbar=None, linewidth=1.6)
    return present


def rrmse_figure(rows: pd.DataFrame, estimators: Sequence[str], title: str) -> Figure | None:
    """rrmse(M) per layer, log-log, one line per estimator, ±2 stderr band for MC values."""
    data = rows[(rows["metric"] == "rrmse") & rows["M"].notna() & (rows["value"] > 0)]
    if data.empty:
        return None
    layers = sorted(set(data["layer"]), key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    pal, marks = palette(estimators), _markers(estimators)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig, axes = _facets(len(layers), f"Relative RMSE vs samples averaged — {title}")
        for ax, layer in zip(axes, layers):
            sub = data[data["layer"] == layer].sort_values("M")
            present = _lines_vs_m(ax, sub, "value", estimators, pal, marks)
            for e in present:
                es = sub[sub["estimator"] == e]
                se = es["stderr"].fillna(0.0).to_numpy()
                if (se > 0).any():
                    # ±2 standard errors of log(rrmse) (delta method: se/v), symmetric on the log axis
                    v = es["value"].to_numpy()
                    f = np.exp(2 * se / v)
                    ax.fill_between(es["M"], v / f, v * f, color=pal[e], alpha=0.2, linewidth=0)
            ax.set(xscale="log", yscale="log", title=_layer_title(layer, n_layers),
                   xlabel="M, samples averaged (log)", ylabel="relative RMSE √MSE(M)/‖g‖ (log)")
        band = Line2D([], [], color="grey", alpha=0.4, linewidth=8, label="±2 s.e. (Monte Carlo)")
        has_se = bool((data["stderr"].fillna(0) > 0).any())
        _legend(fig, estimators, pal, marks, [band] if has_se else [], shown=list(data["estimator"]))
        fig.tight_layout()
    return fig


def cosine_figure(rows: pd.DataFrame, estimators: Sequence[str], title: str) -> Figure | None:
    """cos(ḡ_M, g) per layer: mean line and the 15–85th percentile band, M on a log axis."""
    data = rows[rows["metric"].isin(["cosine_mean", "cosine_p15", "cosine_p85"]) & rows["M"].notna()]
    if data.empty or not (data["metric"] == "cosine_mean").any():
        return None
    wide = data.pivot_table(index=["layer", "estimator", "M"], columns="metric", values="value",
                            aggfunc="first").reset_index()
    layers = sorted(set(wide["layer"]), key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    pal, marks = palette(estimators), _markers(estimators)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig, axes = _facets(len(layers), f"Cosine to the exact gradient vs samples averaged — {title}")
        for ax, layer in zip(axes, layers):
            sub = wide[wide["layer"] == layer].sort_values("M")
            present = _lines_vs_m(ax, sub, "cosine_mean", estimators, pal, marks)
            if {"cosine_p15", "cosine_p85"} <= set(sub.columns):
                for e in present:
                    es = sub[sub["estimator"] == e]
                    ax.fill_between(es["M"], es["cosine_p15"], es["cosine_p85"], color=pal[e],
                                    alpha=0.13, linewidth=0)
            lo = float(np.nanmin(sub[[c for c in ("cosine_p15", "cosine_mean") if c in sub]].to_numpy()))
            ax.set(xscale="log", ylim=(min(lo - 0.05, 0.9), 1.01), title=_layer_title(layer, n_layers),
                   xlabel="M, samples averaged (log)", ylabel="cos(ḡ_M, g), dimensionless")
        band = Line2D([], [], color="grey", alpha=0.4, linewidth=8, label="15–85th percentile")
        _legend(fig, estimators, pal, marks, [band], shown=list(wide["estimator"]))
        fig.tight_layout()
    return fig


def bias_variance_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, estimator): ``rel_bias`` and the relative standard deviation ``√V/‖g‖``.

    ``‖g‖`` is not stored; it follows from ``rrmse(M) = √(‖β‖² + V/M)/‖g‖`` (SPEC §5) at the
    smallest M present: ``‖g‖ = √(bias_norm² + V/M) / rrmse(M)``.
    """
    out = []
    for (layer, est), g in rows.groupby(["layer", "estimator"], sort=False):
        nm = g[g["M"].isna()]
        vals = dict(zip(nm["metric"], nm["value"]))
        rr = g[(g["metric"] == "rrmse") & g["M"].notna()].sort_values("M")
        if {"variance", "bias_norm", "rel_bias"} - set(vals) or rr.empty:
            continue
        M, r = float(rr["M"].iloc[0]), float(rr["value"].iloc[0])
        V, bn = max(vals["variance"], 0.0), max(vals["bias_norm"], 0.0)
        if not r > 0:
            continue
        gnorm = math.sqrt(bn**2 + V / M) / r
        out.append({"layer": layer, "estimator": est, "rel_bias": vals["rel_bias"],
                    "rel_sd": math.sqrt(V) / gnorm if gnorm > 0 else float("nan")})
    df = pd.DataFrame(out, columns=["layer", "estimator", "rel_bias", "rel_sd"])
    # an empty frame (e.g. only zero-error estimators, whose ‖g‖ cannot be recovered) has object
    # columns, which numpy's isfinite refuses
    return df.astype({"rel_bias": float, "rel_sd": float})


def _label_points(ax, xs: np.ndarray, ys: np.ndarray, texts: Sequence[str], colours: Sequence,
                  fontsize: float = 7.5) -> None:
    """Write each point's label beside it, moving a label up or down (in steps of one text line)
    when it would cover a label already placed: coincident points (e.g. estimators that agree on a
    layer) stay readable."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before mapping to pixels
    px = ax.transData.transform(np.column_stack([xs, ys]))
    char_w, line_h = fontsize * DPI / 72 * 0.62, fontsize * DPI / 72 * 1.25
    placed: list[tuple[float, float, float]] = []  # x0, y0, width of placed labels, pixels
    for i in np.argsort(px[:, 0], kind="stable"):
        width = char_w * len(texts[i])
        bottom = ax.get_window_extent().y0
        for step in (0, 1, 2, 3, -1, -2, 4, 5, 6):
            x0, y0 = px[i, 0] + 5, px[i, 1] + 4 + step * line_h
            if y0 >= bottom and all(abs(y0 - py) >= line_h or x0 >= px0 + pw or px0 >= x0 + width
                                    for px0, py, pw in placed):
                break
        placed.append((x0, y0, width))
        ax.annotate(texts[i], (xs[i], ys[i]), xytext=(x0 - px[i, 0], y0 - px[i, 1]),
                    textcoords="offset pixels", fontsize=fontsize, color=colours[i])


def bias_variance_figure(rows: pd.DataFrame, estimators: Sequence[str], title: str) -> Figure | None:
    """Relative bias vs relative standard deviation of one sample, per layer, points labelled."""
    bv = bias_variance_frame(rows)
    bv = bv[np.isfinite(bv["rel_sd"]) & np.isfinite(bv["rel_bias"])]
    if bv.empty:
        return None
    layers = sorted(set(bv["layer"]), key=layer_key)
    n_layers = sum(1 for lay in layers if lay.isdigit())
    pal, marks = palette(estimators), _markers(estimators)
    pos_bias = bv["rel_bias"][bv["rel_bias"] > 1e-6]
    linthresh = 10 ** math.floor(math.log10(pos_bias.min())) if not pos_bias.empty else 1e-3
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig, axes = _facets(len(layers), f"Bias vs standard deviation of one sample — {title}\n"
                                         f"(symlog axes: linear near 0, log above; bias linear "
                                         f"below {linthresh:g})")
        for ax, layer in zip(axes, layers):
            sub = bv[bv["layer"] == layer]
            present = [e for e in estimators if e in set(sub["estimator"])]
            sns.scatterplot(data=sub, x="rel_sd", y="rel_bias", hue="estimator", hue_order=present,
                            style="estimator", style_order=present, markers=marks, palette=pal,
                            s=60, ax=ax, legend=False, clip_on=False, zorder=3)
            # x: symlog, so that zero-variance (deterministic) estimators sit at 0 on the axis
            xs = sub["rel_sd"][sub["rel_sd"] > 0]
            x_lin = 10 ** math.floor(math.log10(xs.min())) if not xs.empty else 1.0
            lo = 0.0 if (sub["rel_sd"] <= 0).any() or xs.empty else xs.min() / 2
            hi = xs.max() * 3 if not xs.empty else 10.0
            start = max(x_lin, linthresh)  # where both axes are logarithmic: a straight line
            if start < hi:
                grid = np.geomspace(start, hi, 60)
                ax.plot(grid, grid, color="grey", linestyle="--", linewidth=0.9)
            ax.set_xscale("symlog", linthresh=x_lin, linscale=0.5)
            ax.set_xlim(lo, hi)
            if math.log10(hi / max(lo, x_lin)) < 1.6:  # less than two decades: label 1, 2, 5
                ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=x_lin,
                                                                 subs=[1.0, 2.0, 5.0]))
            ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
            ax.set_ylim(bottom=0)
            _label_points(ax, sub["rel_sd"].to_numpy(float), sub["rel_bias"].to_numpy(float),
                          list(sub["estimator"]), [pal[e] for e in sub["estimator"]])
            ax.set(title=_layer_title(layer, n_layers), xlabel="rel. std. dev. √V/‖g‖ (symlog)",
                   ylabel="rel. bias ‖β‖/‖g‖ (symlog)")
        diag = Line2D([], [], color="grey", linestyle="--", label="bias = std. dev.")
        _legend(fig, estimators, pal, marks, [diag], shown=list(bv["estimator"]))
        fig.tight_layout()
    return fig


def throughput_figure(tp: pd.DataFrame, estimators: Sequence[str], title: str) -> Figure | None:
    """Median samples/s per estimator, error bars from the 25th to the 75th percentile of rounds."""
    if tp.empty:
        return None
    order = [e for e in estimators if e in set(tp["estimator"])]
    tp = tp.drop_duplicates("estimator").set_index("estimator").loc[order].reset_index()
    pal = palette(estimators)
    y = tp["samples_per_s"].to_numpy(float)
    lo = np.clip(y - tp["samples_per_s_lo"].to_numpy(float), 0, None)
    hi = np.clip(tp["samples_per_s_hi"].to_numpy(float) - y, 0, None)
    devices = ", ".join(sorted({f"{d} {t}" for d, t in zip(tp["device"], tp["dtype"])}))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(1.0 + 0.75 * len(order) + 2.0, 4.2), dpi=DPI)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        sns.barplot(data=tp, x="estimator", y="samples_per_s", hue="estimator", order=order,
                    hue_order=order, palette=pal, ax=ax, legend=False, errorbar=None)
        ax.errorbar(np.arange(len(order)), y, yerr=np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]),
                    fmt="none", ecolor="black", capsize=4, linewidth=1.2)
        finite = y[np.isfinite(y) & (y > 0)]
        if finite.size and finite.max() / finite.min() > 30:
            ax.set_yscale("log")
            ax.set_ylabel("samples/s, median over rounds (log)")
        else:
            ax.set_ylabel("samples/s, median over rounds")
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel("estimator (error bars: confidence interval of the median over rounds)")
        ax.tick_params(axis="x", labelrotation=30)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
        ax.set_title(f"Throughput — {title}\n{devices}", fontsize=11)
        fig.tight_layout()
    return fig


def write_figures(run: Run, out_dir: Path) -> list[FigureFile]:
    """Draw every figure of a run into ``out_dir`` (PNG). Returns what was written, in report order."""
    estimators = run.estimators()
    written: list[FigureFile] = []
    for problem, ckpt in run.cells():
        rows = cell_rows(run, problem, ckpt)
        title = cell_label(problem, ckpt)
        base = slug(problem, ckpt)
        tp = run.throughput
        tp = tp[(tp["problem"] == problem) & (tp["checkpoint"] == ckpt)] if not tp.empty else tp
        jobs = [
            ("rrmse", rrmse_figure, rows, f"Relative RMSE vs M per layer (log-log), {title}."),
            ("cosine", cosine_figure, rows,
             f"Cosine to the exact gradient vs M per layer, mean with 15–85th percentile band, {title}."),
            ("bias_variance", bias_variance_figure, rows,
             f"Relative bias vs relative standard deviation of one sample per layer, {title}."),
            ("throughput", throughput_figure, tp,
             f"Throughput (median samples/s, confidence interval bars), {title}."),
        ]
        for kind, fn, data, caption in jobs:
            path = out_dir / f"{base}_{kind}.png"
            fig = None if data.empty else fn(data, estimators, title)
            if fig is not None:
                _save(fig, path)
                written.append(FigureFile(path, caption, kind, problem, ckpt))
    return written
