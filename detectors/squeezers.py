"""Feature squeezers and the spec strings that select them.

A squeezer maps an input to a coarser version of itself: legitimate inputs keep their
prediction, while many adversarial perturbations, which rely on fine detail, do not
(Xu, Evans and Qi, *Feature Squeezing*, NDSS 2018). Every squeezer here is emitted as
ONNX operators so that it runs inside the fused scoring graph.

Spec strings list squeezers separated by commas, each ``name:parameter``:

==================  ===========================================================
``bit_depth:B``     reduce each value to ``B`` bits (1–8) over the input range
``median:K``        K×K median filter over the last two (spatial) axes, K ≥ 2
``quantize:S``      round each tabular feature to a grid of ``S`` standard
                    deviations of that feature, centred on its benign mean
==================  ===========================================================

Median filter conventions (they match ``scipy.ndimage.median_filter`` with
``mode="nearest"``):

* padding replicates the border value (for K ≤ 3 this equals SciPy's default
  ``mode="reflect"``, which the NDSS paper used);
* for an even K the window of output pixel ``i`` covers ``i - K//2 .. i + (K-1)//2``
  (the window's anchor sits right of centre), and the median of its K·K values is the
  one at 0-based rank ``K·K // 2`` in ascending order (the upper of the two middle
  values).

Examples
--------
>>> parse_squeezer_spec("bit_depth:1,median:2,median:3")
(BitDepth(bits=1, low=0.0, high=1.0), MedianFilter(size=2), MedianFilter(size=3))
>>> format_squeezer_spec(parse_squeezer_spec("median:3x3"))
'median:3'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np

from detectors._errors import SqueezerSpecError
from detectors._onnx_builder import INT64_MAX, GraphBuilder

__all__ = [
    "PRESETS",
    "BitDepth",
    "InputKind",
    "MedianFilter",
    "Quantize",
    "Squeezer",
    "format_squeezer_spec",
    "parse_squeezer_spec",
    "squeezer_from_dict",
]

InputKind = Literal["image", "tabular"]

#: Squeezers chosen when none are given, by input kind.
PRESETS: dict[InputKind, str] = {
    "image": "bit_depth:4,median:2",
    "tabular": "quantize:0.5",
}


@dataclass(frozen=True)
class BitDepth:
    """Reduce every value to ``bits`` bits over ``[low, high]`` (values are clipped first).

    Parameters
    ----------
    bits
        Bits kept, 1 to 8: the input is mapped to ``2**bits`` evenly spaced levels.
    low, high
        The range of valid input values (``[0, 1]`` for most image models).
    """

    bits: int
    low: float = 0.0
    high: float = 1.0
    kind: ClassVar[str] = "bit_depth"
    input_kinds: ClassVar[tuple[InputKind, ...]] = ("image", "tabular")

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise SqueezerSpecError(f"bit_depth: bits must be 1 to 8, got {self.bits}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise SqueezerSpecError(
                f"bit_depth: input range must be finite with low < high, "
                f"got [{self.low}, {self.high}]"
            )

    @property
    def spec(self) -> str:
        """This squeezer as a spec item."""
        return f"bit_depth:{self.bits}"

    def to_onnx(self, graph: GraphBuilder, x: str, rank: int) -> str:
        """Emit ``round((clip(x) - low) · L / (high - low)) · (high - low) / L + low``."""
        levels = 2**self.bits - 1
        low, high = float(self.low), float(self.high)
        span = high - low
        clipped = graph.op("Clip", [x, graph.const(low), graph.const(high)])
        if low != 0.0:
            clipped = graph.op("Sub", [clipped, graph.const(low)])
        scaled = graph.op("Mul", [clipped, graph.const(levels / span)])
        rounded = graph.op("Round", [scaled])
        squeezed = graph.op("Mul", [rounded, graph.const(span / levels)], hint="bit_depth")
        if low != 0.0:
            squeezed = graph.op("Add", [squeezed, graph.const(low)])
        return squeezed

    def to_dict(self) -> dict[str, Any]:
        """Parameters as stored in a detector file."""
        return {"kind": self.kind, "bits": self.bits, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class MedianFilter:
    """Replace each value by the median of its ``size``×``size`` spatial neighbourhood.

    See the module documentation for the padding and even-window conventions.

    Parameters
    ----------
    size
        Window side, 2 or more.
    """

    size: int
    kind: ClassVar[str] = "median"
    input_kinds: ClassVar[tuple[InputKind, ...]] = ("image",)

    def __post_init__(self) -> None:
        if self.size < 2:
            raise SqueezerSpecError(f"median: window size must be at least 2, got {self.size}")

    @property
    def spec(self) -> str:
        """This squeezer as a spec item."""
        return f"median:{self.size}"

    def to_onnx(self, graph: GraphBuilder, x: str, rank: int) -> str:
        """Emit edge padding, then a Min/Max sorting network (K = 2, 3) or a ``TopK``.

        For the common 2×2 and 3×3 windows a network of elementwise ``Min``/``Max`` over
        shifted views picks the same value as a sort at a fraction of the cost; larger
        windows gather the K·K views and take the median with ``TopK``.
        """
        k = self.size
        before, after = k // 2, (k - 1) // 2
        pads = [0] * (rank - 2) + [before, before] + [0] * (rank - 2) + [after, after]
        padded = graph.op("Pad", [x, graph.const(pads, "pads")], mode="edge")
        if k == 2:
            return self._median_2x2(graph, padded, rank)
        if k == 3:
            return self._median_3x3(graph, padded, rank)
        return self._median_topk(graph, padded, rank)

    def _shift(self, graph: GraphBuilder, x: str, offset: int, axis: int) -> str:
        """The view of padded ``x`` starting ``offset`` along ``axis``, K − 1 shorter."""
        k = self.size
        # End offsets count from the far edge so spatial sizes may stay symbolic.
        end = -(k - 1 - offset) if offset < k - 1 else INT64_MAX
        return graph.slice(x, [offset], [end], [axis])

    def _median_2x2(self, graph: GraphBuilder, padded: str, rank: int) -> str:
        # Sort vertical pairs, then the upper middle of four is max(min(hi), max(lo)).
        rows, cols = rank - 2, rank - 1
        top, bottom = (self._shift(graph, padded, d, rows) for d in (0, 1))
        low, high = graph.op("Min", [top, bottom]), graph.op("Max", [top, bottom])
        low_l, low_r = (self._shift(graph, low, d, cols) for d in (0, 1))
        high_l, high_r = (self._shift(graph, high, d, cols) for d in (0, 1))
        return graph.op(
            "Max",
            [graph.op("Min", [high_l, high_r]), graph.op("Max", [low_l, low_r])],
            hint="median",
        )

    def _median_3x3(self, graph: GraphBuilder, padded: str, rank: int) -> str:
        # Sort each vertical triple; the median of nine is then the median of (the largest
        # low, the median of the middles, the smallest high).
        rows, cols = rank - 2, rank - 1
        a, b, c = (self._shift(graph, padded, d, rows) for d in (0, 1, 2))
        ab_low, ab_high = graph.op("Min", [a, b]), graph.op("Max", [a, b])
        low = graph.op("Min", [ab_low, c])
        rest = graph.op("Max", [ab_low, c])
        middle = graph.op("Min", [ab_high, rest])
        high = graph.op("Max", [ab_high, rest])
        lows = [self._shift(graph, low, d, cols) for d in (0, 1, 2)]
        middles = [self._shift(graph, middle, d, cols) for d in (0, 1, 2)]
        highs = [self._shift(graph, high, d, cols) for d in (0, 1, 2)]
        largest_low = graph.op("Max", [graph.op("Max", lows[:2]), lows[2]])
        smallest_high = graph.op("Min", [graph.op("Min", highs[:2]), highs[2]])
        return _median_of_three(
            graph, largest_low, _median_of_three(graph, *middles), smallest_high
        )

    def _median_topk(self, graph: GraphBuilder, padded: str, rank: int) -> str:
        k = self.size
        views = []
        for dy in range(k):
            for dx in range(k):
                view = self._shift(graph, self._shift(graph, padded, dy, rank - 2), dx, rank - 1)
                views.append(graph.unsqueeze(view, [rank]))
        window = graph.op("Concat", views, axis=rank)
        rank_of_median = (k * k) // 2
        smallest = graph.op(
            "TopK",
            [window, graph.const([rank_of_median + 1], "k")],
            axis=rank,
            largest=0,
            sorted=1,
        )
        # TopK has two outputs (values, indices); only values are used.
        graph.nodes[-1].output.append(graph.fresh("topk_indices"))
        return graph.reduce("ReduceMax", smallest, [rank], keepdims=False)

    def to_dict(self) -> dict[str, Any]:
        """Parameters as stored in a detector file."""
        return {"kind": self.kind, "size": self.size}


@dataclass(frozen=True)
class Quantize:
    """Round each tabular feature to a grid ``step`` standard deviations wide.

    The grid of feature ``j`` is ``center[j] + n · step · scale[j]``; ``center`` and
    ``scale`` are the benign mean and standard deviation, learned by :meth:`fit` during
    calibration. Constant features (zero deviation) are left as they are.

    Parameters
    ----------
    step
        Grid spacing in standard deviations, greater than 0.
    center, scale
        Per-feature mean and standard deviation; ``None`` until fitted.
    """

    step: float
    center: tuple[float, ...] | None = field(default=None, repr=False)
    scale: tuple[float, ...] | None = field(default=None, repr=False)
    kind: ClassVar[str] = "quantize"
    input_kinds: ClassVar[tuple[InputKind, ...]] = ("tabular",)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step) and self.step > 0):
            raise SqueezerSpecError(f"quantize: step must be a positive number, got {self.step}")
        if (self.center is None) != (self.scale is None):
            raise SqueezerSpecError("quantize: center and scale must be given together")
        if (
            self.center is not None
            and self.scale is not None
            and (len(self.center) != len(self.scale))
        ):
            raise SqueezerSpecError("quantize: center and scale differ in length")

    @property
    def spec(self) -> str:
        """This squeezer as a spec item."""
        return f"quantize:{self.step:g}"

    @property
    def fitted(self) -> bool:
        """Whether the per-feature grid has been learned."""
        return self.center is not None

    def fit(self, mean: np.ndarray, std: np.ndarray) -> Quantize:
        """Return a copy whose grid follows the given per-feature mean and deviation."""
        return replace(
            self,
            center=tuple(float(v) for v in np.ravel(mean)),
            scale=tuple(float(v) for v in np.ravel(std)),
        )

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The grid origin and spacing per feature (spacing 0 means "leave as is")."""
        if self.center is None or self.scale is None:
            raise SqueezerSpecError("quantize: the grid is not fitted; calibrate first")
        center = np.asarray(self.center, dtype=np.float32)
        spacing = np.asarray(self.scale, dtype=np.float32) * np.float32(self.step)
        return center, spacing

    def to_onnx(self, graph: GraphBuilder, x: str, rank: int) -> str:
        """Emit ``where(spacing > 0, round((x - c) / s) · s + c, x)`` per feature."""
        center, spacing = self.grid()
        safe = np.where(spacing > 0, spacing, np.float32(1.0)).astype(np.float32)
        shifted = graph.op("Sub", [x, graph.const(center, "center")])
        cells = graph.op("Round", [graph.op("Div", [shifted, graph.const(safe, "spacing")])])
        snapped = graph.op(
            "Add", [graph.op("Mul", [cells, graph.const(safe, "spacing")]), graph.const(center)]
        )
        keep = graph.const(spacing > 0, "has_spacing")
        return graph.op("Where", [keep, snapped, x], hint="quantize")

    def to_dict(self) -> dict[str, Any]:
        """Parameters as stored in a detector file."""
        return {
            "kind": self.kind,
            "step": self.step,
            "center": list(self.center) if self.center is not None else None,
            "scale": list(self.scale) if self.scale is not None else None,
        }


Squeezer = BitDepth | MedianFilter | Quantize


def _median_of_three(graph: GraphBuilder, a: str, b: str, c: str) -> str:
    """Elementwise median of three tensors: max(min(a, b), min(max(a, b), c))."""
    return graph.op(
        "Max",
        [graph.op("Min", [a, b]), graph.op("Min", [graph.op("Max", [a, b]), c])],
    )


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SqueezerSpecError(f"{name}: expected an integer, got {text!r}") from None


def _parse_item(item: str, input_range: tuple[float, float]) -> Squeezer:
    name, sep, param = item.partition(":")
    name, param = name.strip(), param.strip()
    if not sep or not param:
        raise SqueezerSpecError(
            f"squeezer {item!r} needs a parameter, e.g. bit_depth:4, median:2, quantize:0.5"
        )
    if name == "bit_depth":
        return BitDepth(_parse_int(name, param), low=input_range[0], high=input_range[1])
    if name == "median":
        side, x, other = param.partition("x")
        if x and side != other:
            raise SqueezerSpecError(f"median: only square windows are supported, got {param!r}")
        return MedianFilter(_parse_int(name, side))
    if name == "quantize":
        try:
            step = float(param)
        except ValueError:
            raise SqueezerSpecError(f"quantize: expected a number, got {param!r}") from None
        return Quantize(step)
    raise SqueezerSpecError(
        f"unknown squeezer {name!r}; known squeezers: bit_depth, median, quantize"
    )


def parse_squeezer_spec(
    spec: str, *, input_range: tuple[float, float] = (0.0, 1.0)
) -> tuple[Squeezer, ...]:
    """Parse a comma-separated squeezer spec.

    ``input_range`` is the valid value range of the model input, used by ``bit_depth``.
    Raises :class:`SqueezerSpecError` with the offending item on bad input.
    """
    items = [item for item in (part.strip() for part in spec.split(",")) if item]
    if not items:
        raise SqueezerSpecError("the squeezer spec is empty; give at least one squeezer")
    return tuple(_parse_item(item, input_range) for item in items)


def format_squeezer_spec(squeezers: tuple[Squeezer, ...]) -> str:
    """The canonical spec string of ``squeezers``."""
    return ",".join(s.spec for s in squeezers)


def squeezer_from_dict(data: dict[str, Any]) -> Squeezer:
    """Rebuild a squeezer from :meth:`to_dict` output (as stored in a detector file)."""
    kind = data.get("kind")
    try:
        if kind == BitDepth.kind:
            return BitDepth(int(data["bits"]), float(data["low"]), float(data["high"]))
        if kind == MedianFilter.kind:
            return MedianFilter(int(data["size"]))
        if kind == Quantize.kind:
            center, scale = data.get("center"), data.get("scale")
            return Quantize(
                float(data["step"]),
                center=tuple(float(v) for v in center) if center is not None else None,
                scale=tuple(float(v) for v in scale) if scale is not None else None,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise SqueezerSpecError(f"malformed {kind} squeezer parameters: {exc}") from None
    raise SqueezerSpecError(f"unknown squeezer kind {kind!r}")
