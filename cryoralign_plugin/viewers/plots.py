"""Figure builders for 2D alignment and classification results: arrays in, matplotlib Figure out.

No Scipion here, so notebooks and scripts can use them on the engine's output too.  Each builder
draws into ``fig`` when given (the Scipion viewer passes a pyplot figure so that its Tk window can
show it) and otherwise into a new ``matplotlib.figure.Figure``, which needs no display and is
never registered with pyplot (nothing to close).  Class ids are 1-based, as Scipion shows them.
"""
import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure

FONT = 10
CLASS_COLORS = "tab10"


def _figure(fig, size):
    if fig is None:
        return Figure(figsize=size, layout="constrained")
    fig.set_size_inches(size)
    fig.set_layout_engine("constrained")
    return fig


def _class_colors(n):
    """One colour per class: tab10 up to 10 classes, then an evenly sampled rainbow."""
    cmap = matplotlib.colormaps[CLASS_COLORS if n <= 10 else "gist_rainbow"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _class_axis(ax, class_ids):
    """Categorical x axis of class ids (thinned out when there are many)."""
    step = max(1, int(math.ceil(len(class_ids) / 30)))
    ax.set_xticks(range(0, len(class_ids), step), [str(c) for c in class_ids][::step])
    ax.set_xlabel("class", fontsize=FONT)


def gallery(averages, class_ids, sizes, resolutions, unit="A", columns=None, fig=None):
    """Class averages in a grid, each titled with its class id, size and FRC resolution."""
    n = len(averages)
    columns = columns or int(math.ceil(n / max(1, round(math.sqrt(n / 2.5)))))   # about 2.5:1
    rows = int(math.ceil(n / columns))
    fig = _figure(fig, (max(1.7 * columns + 0.2, 3.6), 1.95 * rows + 0.5))
    total = max(int(np.sum(sizes)), 1)
    for i, (image, cid, size, res) in enumerate(zip(averages, class_ids, sizes, resolutions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image, cmap="gray", origin="lower", interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("class %d\n%d ptcls (%.0f%%)\n%.1f %s" % (cid, size, 100.0 * size / total, res, unit),
                     fontsize=FONT - 1, linespacing=1.1)
    fig.suptitle("%d class average%s, %d particles" % (n, "s" if n != 1 else "", total), fontsize=FONT + 2)
    return fig


def angle_histogram(psi, bins=36, fig=None):
    """Histogram of the in-plane angles (degrees, folded into [0, 360))."""
    fig = _figure(fig, (6, 4))
    ax = fig.add_subplot()
    ax.hist(np.mod(psi, 360.0), bins=bins, range=(0.0, 360.0), color="tab:blue", edgecolor="white")
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 60))
    ax.set_xlabel("in-plane angle psi (deg)", fontsize=FONT)
    ax.set_ylabel("particles", fontsize=FONT)
    ax.set_title("In-plane angles of %d particles" % len(psi), fontsize=FONT + 1)
    return fig


def shift_histogram(sx, sy, bins=15, fig=None):
    """2D histogram of the x/y shifts (px) on a square range that holds every particle."""
    fig = _figure(fig, (5.6, 4.8))
    ax = fig.add_subplot()
    limit = max(float(np.max(np.abs(np.concatenate([sx, sy])))) if len(sx) else 0.0, 0.5) * 1.001
    _, _, _, mesh = ax.hist2d(sx, sy, bins=bins, range=[[-limit, limit], [-limit, limit]], cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="particles")
    ax.set_aspect("equal")
    ax.set_xlabel("x shift (px)", fontsize=FONT)
    ax.set_ylabel("y shift (px)", fontsize=FONT)
    ax.set_title("Shifts of %d particles" % len(sx), fontsize=FONT + 1)
    return fig


def mirror_fraction(mirrored, classes, class_ids, fig=None):
    """Fraction of mirrored particles per class, with the overall fraction as a dashed line."""
    mirrored, classes = np.asarray(mirrored, bool), np.asarray(classes)
    fractions = [mirrored[classes == c].mean() if np.any(classes == c) else 0.0 for c in class_ids]
    fig = _figure(fig, (max(4.0, 0.45 * len(class_ids) + 2), 4))
    ax = fig.add_subplot()
    ax.bar(range(len(class_ids)), fractions, color="tab:purple")
    overall = mirrored.mean() if len(mirrored) else 0.0
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label="all: %.2f" % overall)
    ax.set_ylim(0, 1)
    _class_axis(ax, class_ids)
    ax.set_ylabel("mirrored fraction", fontsize=FONT)
    ax.set_title("Mirrored particles", fontsize=FONT + 1)
    ax.legend(fontsize=FONT - 1, loc="upper right")
    return fig


def class_sizes(class_ids, sizes, fig=None):
    """Bar chart of the number of particles per class, each bar labelled with its count."""
    fig = _figure(fig, (max(4.0, 0.45 * len(class_ids) + 2), 4))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(class_ids)), sizes, color=_class_colors(len(class_ids)))
    if len(class_ids) <= 30:
        ax.bar_label(bars, fontsize=FONT - 2)
    _class_axis(ax, class_ids)
    ax.set_ylabel("particles", fontsize=FONT)
    ax.set_title("Class sizes (%d particles)" % int(np.sum(sizes)), fontsize=FONT + 1)
    ax.margins(y=0.12)
    return fig


def scores_per_class(scores, classes, class_ids, fig=None):
    """Box plot of the particles' correlation scores in each class."""
    scores, classes = np.asarray(scores), np.asarray(classes)
    groups = [scores[classes == c] for c in class_ids]
    fig = _figure(fig, (max(4.0, 0.45 * len(class_ids) + 2), 4))
    ax = fig.add_subplot()
    boxes = ax.boxplot(groups, positions=range(len(class_ids)), widths=0.6, patch_artist=True,
                       flierprops={"markersize": 2}, medianprops={"color": "black"})
    for patch, color in zip(boxes["boxes"], _class_colors(len(class_ids))):
        patch.set_facecolor(color)
    _class_axis(ax, class_ids)
    ax.set_ylabel("correlation score", fontsize=FONT)
    ax.set_title("Correlation score per class", fontsize=FONT + 1)
    return fig


# (history key, axis label, scale); "classes" is the number of classes an iteration searched with
CONVERGENCE_PANELS = [("mean_score", "mean score", 1.0),
                      ("mean_margin", "mean assignment margin", 1.0),
                      ("class_changes", "class changes (%)", 100.0),
                      ("classes", "classes", 1.0),
                      ("mean_angle_change", "mean angle change (deg)", 1.0),
                      ("mean_shift_change", "mean shift change (px)", 1.0),
                      ("particles_per_second", "particles / s", 1.0)]


def _history_value(row, key):
    if key == "classes":
        return len(row["class_sizes"]) if row.get("class_sizes") else np.nan
    return row.get(key, np.nan)


def convergence(history, fig=None):
    """Per-iteration curves from the engine's history (a list of dicts), iteration on every x axis.

    The assignment margin (best minus runner-up score, :mod:`~cryoralign_plugin.engine.criteria`) tells a
    poor classification from a good one where the mean score hardly does; the classes panel shows the
    over-clustering and the late re-split.  Iterations where classes were re-seeded are marked with
    dotted lines on the class-change panel; the last panel is the FRC resolution (px) of the classes
    (median and range).  A growing
    (streaming) run's batches are shaded alternately on every panel, each labelled on the first with
    its number and particle count ("batch 2: 150"), and the classes seeded from a batch's misfits marked with dashed
    lines on the class-change panel.
    """
    iterations = [h["iteration"] for h in history]
    fig = _figure(fig, (14, 6))
    axes = fig.subplots(2, 4, sharex=True).ravel()
    for ax, (key, label, scale) in zip(axes, CONVERGENCE_PANELS):
        ax.plot(iterations, [scale * _history_value(h, key) for h in history], "o-", markersize=3)
        ax.set_ylabel(label, fontsize=FONT)
        if key == "class_changes":
            for h in history:
                if h.get("reseeded"):
                    ax.axvline(h["iteration"], color="tab:red", linestyle=":", linewidth=1)
    resolution = [np.asarray(h.get("resolution_px") or [np.nan], float) for h in history]
    ax = axes[-1]
    ax.plot(iterations, [np.median(r) for r in resolution], "o-", markersize=3, label="median")
    ax.fill_between(iterations, [r.min() for r in resolution], [r.max() for r in resolution],
                    alpha=0.3, label="range over classes")
    ax.set_ylabel("FRC resolution (px)", fontsize=FONT)
    ax.legend(fontsize=FONT - 2)
    _mark_batches(axes, history, axes[[key for key, _, _ in CONVERGENCE_PANELS].index("class_changes")])
    for ax in axes:
        ax.set_xlabel("iteration", fontsize=FONT)
        ax.grid(alpha=0.3)
        if iterations:
            ax.set_xlim(min(iterations) - 0.5, max(iterations) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Convergence over %d iterations" % len(iterations), fontsize=FONT + 2)
    return fig


def batch_spans(history):
    """``(batch, particles, first iteration, last iteration)`` of each batch of a growing run's history
    (rows with ``batch``); empty for other runs."""
    spans = {}
    for h in history:
        if "batch" in h:
            b = spans.setdefault(h["batch"], [h.get("batch_particles", 0), h["iteration"], h["iteration"]])
            b[1], b[2] = min(b[1], h["iteration"]), max(b[2], h["iteration"])
    return [(b, *spans[b]) for b in sorted(spans)]


def _mark_batches(axes, history, changes):
    """Shade every other batch on ``axes``, label them on the first, and mark on ``changes`` (the
    class-change panel) the classes seeded from a batch's misfits."""
    spans = batch_spans(history)
    for k, (batch, particles, first, last) in enumerate(spans):
        for ax in axes:
            if k % 2 == 0:
                ax.axvspan(first - 0.5, last + 0.5, color="0.85", alpha=0.5, linewidth=0)
        axes[0].annotate("batch %d: %d" % (batch, particles), (first - 0.45, 0.98), rotation=90,
                         xycoords=("data", "axes fraction"), va="top", ha="left", fontsize=FONT - 3)
    for h in history:
        if h.get("new_class"):
            changes.axvline(h["iteration"], color="tab:green", linestyle="--", linewidth=1)


def embedding(points, classes, class_ids, average_points=None, method="PCA", fig=None):
    """2D embedding of aligned particles coloured by class, class averages marked with stars."""
    points, classes = np.asarray(points), np.asarray(classes)
    fig = _figure(fig, (7, 6))
    ax = fig.add_subplot()
    colors = _class_colors(len(class_ids))
    for color, cid in zip(colors, class_ids):
        members = classes == cid
        ax.scatter(points[members, 0], points[members, 1], s=6, color=color, alpha=0.6, linewidths=0,
                   label="class %d (%d)" % (cid, members.sum()))
    if average_points is not None:
        for color, cid, (x, y) in zip(colors, class_ids, average_points):
            ax.scatter([x], [y], s=260, marker="*", color=color, edgecolors="black", linewidths=1.2,
                       zorder=3)
            ax.annotate(str(cid), (x, y), xytext=(6, 6), textcoords="offset points",
                        fontsize=FONT, fontweight="bold")
    ax.set_xlabel("%s 1" % method, fontsize=FONT)
    ax.set_ylabel("%s 2" % method, fontsize=FONT)
    ax.set_title("%s of %d aligned particles (stars: class averages)" % (method, len(points)),
                 fontsize=FONT + 1)
    if len(class_ids) <= 20:
        ax.legend(fontsize=FONT - 2, markerscale=2.5, loc="best")
    return fig
