"""PNG figures on matplotlib's Agg canvas (no pyplot, no global backend switch), returned as bytes
for `sen12ms_common.storage.files`; matplotlib is imported only when a figure is made."""

from __future__ import annotations

import io

DPI = 100


def figure(width: float, height: float, constrained: bool = False):
    """A figure of `width` x `height` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # sen12ms_common imports only numpy when imported
    from matplotlib.figure import Figure  # sen12ms_common imports only numpy when imported

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()
