"""Pictures of a comparison: the rate-distortion plot and side-by-side frame strips.

matplotlib's object API on the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PANELS = (
    ("lpips", "LPIPS (lower is better)"),
    ("psnr_y", "PSNR-Y (dB)"),
    ("ms_ssim", "MS-SSIM"),
)  # (row key, axis label)
LPIPS_STYLES = {"lpips_alex": "-", "lpips_vgg": "--"}


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def rd_plot(
    rows: Sequence[dict], path: str, title: str, lpips_note: str | None = None, ms_ssim_label: str = "MS-SSIM"
) -> None:
    """Bitrate (achieved kb/s) against LPIPS, PSNR-Y and MS-SSIM, one line per codec.

    ``rows`` are compare table rows (codec, achieved_kbps, psnr_y, ms_ssim, lpips_alex,
    lpips_vgg; None = n/a). With no LPIPS numbers the LPIPS panel shows ``lpips_note``.
    """
    figure = _figure(13, 4)
    axes = figure.subplots(1, 3)
    codecs = list(dict.fromkeys(row["codec"] for row in rows))
    colors = {codec: f"C{i}" for i, codec in enumerate(codecs)}
    for ax, (key, label) in zip(axes, PANELS):
        plotted = False
        for codec in codecs:
            points = sorted((r["achieved_kbps"], r) for r in rows if r["codec"] == codec)
            keys = LPIPS_STYLES if key == "lpips" else {key: "-"}
            for metric, style in keys.items():
                xy = [(kbps, r[metric]) for kbps, r in points if r[metric] is not None]
                if xy:
                    name = f"{codec} ({metric.split('_')[1]})" if key == "lpips" else codec
                    ax.plot(*zip(*xy), style, marker="o", color=colors[codec], label=name)
                    plotted = True
        ax.set_xlabel("bitrate (kb/s, achieved)")
        ax.set_ylabel(ms_ssim_label if key == "ms_ssim" else label)
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        else:
            note = lpips_note if key == "lpips" and lpips_note else "unavailable"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(title)
    figure.savefig(path, dpi=80)


def frame_strip(panels: Sequence[tuple[str, np.ndarray]], path: str, title: str) -> None:
    """One row of labelled RGB uint8 (H, W, 3) frames, side by side, at about their own size."""
    height, width = panels[0][1].shape[:2]
    scale = max(1.0, 160 / width)  # keep small frames big enough for their labels
    figure = _figure(len(panels) * width * scale / 100, height * scale / 100 + 0.6)
    for ax, (label, frame) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100)
