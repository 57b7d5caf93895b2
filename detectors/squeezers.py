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
``quantile:K``      snap each tabular feature to the nearest of ``K`` points
                    placed at its benign quantiles (2 ≤ K ≤ 1024)
``round:D``         round each tabular feature to ``D`` decimal places
                    (−6 ≤ D ≤ 12; negative D rounds to tens, hundreds, …)
==================  ===========================================================

``quantize`` and ``quantile`` learn a per-feature grid from benign data during
calibration (:meth:`Quantize.fit`, :meth:`QuantileGrid.fit`); ``round`` needs no fitting.

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
>>> parse_squeezer_spec("quantile:8,round:2")
(QuantileGrid(levels=8), RoundDecimals(decimals=2))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
from onnx import TensorProto

from detectors._errors import CalibrationError, SqueezerSpecError
from detectors._onnx_builder import INT64_MAX, GraphBuilder

__all__ = [
    "PRESETS",
    "BitDepth",
    "InputKind",
    "MedianFilter",
    "QuantileGrid",
    "Quantize",
    "RoundDecimals",
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

    @property
    def n_features(self) -> int | None:
        """How many features the grid was fitted on; ``None`` until fitted."""
        return None if self.center is None else len(self.center)

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


#: Most grid points ``quantile:K`` accepts. The graph compares every value with its
#: feature's K − 1 midpoints, a ``[batch, features, K − 1]`` table, so K bounds its memory.
MAX_QUANTILE_LEVELS = 1024


@dataclass(frozen=True)
class QuantileGrid:
    """Snap each tabular feature to the nearest of ``levels`` points at its benign quantiles.

    Point ``i`` (``i = 0 … K−1``) of feature ``j`` is the benign ``(i + 0.5)/K`` quantile of
    that feature, taken as an observed value (NumPy's ``method="inverted_cdf"``: the
    smallest benign value with at least that fraction of the benign values at or below
    it), learned by :meth:`fit` during calibration. Grid points are therefore values the
    feature really takes, so integer and one-hot features stay on their values.

    A value goes to the nearest point in exact arithmetic; a value exactly halfway between
    two points goes to the lower one. Discrete features repeat quantiles; the grid keeps
    all ``K`` points per feature (duplicates included) so the graph has a fixed
    ``[features, K]`` shape, and repeats do not change which value a feature snaps to.
    A feature that was constant in the benign data snaps every value to that constant.

    Parameters
    ----------
    levels
        Grid points per feature, 2 to :data:`MAX_QUANTILE_LEVELS`.
    points
        Per feature, its ``levels`` grid points in ascending order; ``None`` until fitted.

    Examples
    --------
    >>> benign = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]], np.float32)
    >>> grid = QuantileGrid(2).fit(benign)
    >>> grid.points
    ((0.0, 2.0), (0.0, 1.0))
    """

    levels: int
    points: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)
    kind: ClassVar[str] = "quantile"
    input_kinds: ClassVar[tuple[InputKind, ...]] = ("tabular",)

    def __post_init__(self) -> None:
        if not 2 <= self.levels <= MAX_QUANTILE_LEVELS:
            raise SqueezerSpecError(
                f"quantile: the number of grid points must be 2 to {MAX_QUANTILE_LEVELS}, "
                f"got {self.levels}"
            )
        if self.points is None:
            return
        lengths = {len(row) for row in self.points}
        if not self.points or lengths != {self.levels}:
            raise SqueezerSpecError(
                f"quantile: the fitted grid must hold {self.levels} points for each of at "
                f"least one feature, got rows of {sorted(lengths) or 'no'} points"
            )
        grid = np.asarray(self.points, dtype=np.float64)
        if not np.all(np.isfinite(grid)):
            raise SqueezerSpecError("quantile: the fitted grid holds non-finite points")
        if np.any(np.diff(grid, axis=1) < 0):
            raise SqueezerSpecError("quantile: each feature's grid points must be ascending")

    @property
    def spec(self) -> str:
        """This squeezer as a spec item."""
        return f"quantile:{self.levels}"

    @property
    def fitted(self) -> bool:
        """Whether the per-feature grid has been learned."""
        return self.points is not None

    @property
    def n_features(self) -> int | None:
        """How many features the grid was fitted on; ``None`` until fitted."""
        return None if self.points is None else len(self.points)

    @property
    def probabilities(self) -> np.ndarray:
        """The quantile levels of the grid points, ``(i + 0.5) / K`` for ``i = 0 … K−1``."""
        levels: np.ndarray = (np.arange(self.levels) + 0.5) / self.levels
        return levels

    def fit(self, sample: np.ndarray) -> QuantileGrid:
        """Return a copy whose grid holds the quantiles of a benign ``[events, features]`` sample.

        Raises :class:`CalibrationError` for an empty, non-2-D or non-finite sample.
        """
        values = np.asarray(sample, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise CalibrationError(
                "quantile: fitting needs benign inputs shaped [events, features], "
                f"got shape {list(values.shape)}"
            )
        if not np.all(np.isfinite(values)):
            raise CalibrationError("quantile: the benign inputs hold non-finite values")
        quantiles = np.quantile(values, self.probabilities, axis=0, method="inverted_cdf")
        points = tuple(tuple(float(v) for v in feature) for feature in quantiles.T)
        return replace(self, points=points)

    def grid(self) -> np.ndarray:
        """The grid points as a ``[features, levels]`` float32 array."""
        if self.points is None:
            raise SqueezerSpecError("quantile: the grid is not fitted; calibrate first")
        return np.asarray(self.points, dtype=np.float32)

    def to_onnx(self, graph: GraphBuilder, x: str, rank: int) -> str:
        """Emit ``points[j, #{midpoints of feature j below x}]`` for each feature ``j``.

        The index of the nearest point is the number of midpoints between neighbouring
        points that ``x`` lies strictly above: elementwise ``Greater`` against a constant
        ``[features, K − 1]`` table, summed, then a ``Gather`` from the flattened grid.
        Unlike ``ArgMin``, whose choice among equal values could differ between execution
        providers, this settles ties the same way everywhere.
        """
        if rank != 2:
            raise SqueezerSpecError("quantile: applies to tabular inputs [batch, features] only")
        points = self.grid()
        n_features, levels = points.shape
        midpoints = _midpoint_floors(points)
        above = graph.op("Greater", [graph.unsqueeze(x, [2]), graph.const(midpoints, "midpoints")])
        # Counted in float32 (exact up to 2^24): not every execution provider sums booleans.
        count = graph.reduce(
            "ReduceSum", graph.op("Cast", [above], to=TensorProto.FLOAT), [2], keepdims=False
        )
        offsets = graph.const(np.arange(n_features) * levels, "feature_offsets")
        index = graph.op("Add", [graph.op("Cast", [count], to=TensorProto.INT64), offsets])
        flat = graph.const(points.reshape(-1), "quantile_points")
        return graph.op("Gather", [flat, index], hint="quantile", axis=0)

    def to_dict(self) -> dict[str, Any]:
        """Parameters as stored in a detector file."""
        return {
            "kind": self.kind,
            "levels": self.levels,
            "points": [list(row) for row in self.points] if self.points is not None else None,
        }


#: Decimal places ``round:D`` accepts: from rounding to millions to 12 decimals, beyond
#: which float32 (about 7 significant digits) cannot tell the difference.
ROUND_DECIMALS_RANGE = (-6, 12)


@dataclass(frozen=True)
class RoundDecimals:
    """Round every tabular feature to ``decimals`` decimal places, like ``numpy.round``.

    Needs no fitting: one precision for all features, so it suits data whose features
    share a natural resolution (amounts in currency units, measurements recorded to a
    fixed number of digits). Halves round to even, as in ONNX ``Round`` and NumPy. The
    arithmetic is NumPy's, in float32: for ``D ≥ 0`` ``rint(x · 10^D) / 10^D``, for
    ``D < 0`` ``rint(x / 10^−D) · 10^−D``, so the result equals ``numpy.round(x, D)`` on a
    float32 array bit for bit.

    Parameters
    ----------
    decimals
        Decimal places kept, −6 to 12; ``-2`` rounds to hundreds.
    """

    decimals: int
    kind: ClassVar[str] = "round"
    input_kinds: ClassVar[tuple[InputKind, ...]] = ("tabular",)

    def __post_init__(self) -> None:
        low, high = ROUND_DECIMALS_RANGE
        if not low <= self.decimals <= high:
            raise SqueezerSpecError(
                f"round: decimal places must be {low} to {high}, got {self.decimals}"
            )

    @property
    def spec(self) -> str:
        """This squeezer as a spec item."""
        return f"round:{self.decimals}"

    def to_onnx(self, graph: GraphBuilder, x: str, rank: int) -> str:
        """Emit ``Round(x · 10^D) / 10^D`` (``Round(x / 10^−D) · 10^−D`` for ``D < 0``)."""
        # Scaling by a power of ten ≥ 1 keeps the constant exact in float32 (to 10^10).
        scale = graph.const(10.0 ** abs(self.decimals), "scale")
        scale_up, scale_down = ("Mul", "Div") if self.decimals >= 0 else ("Div", "Mul")
        rounded = graph.op("Round", [graph.op(scale_up, [x, scale])])
        return graph.op(scale_down, [rounded, scale], hint="round")

    def to_dict(self) -> dict[str, Any]:
        """Parameters as stored in a detector file."""
        return {"kind": self.kind, "decimals": self.decimals}


Squeezer = BitDepth | MedianFilter | Quantize | QuantileGrid | RoundDecimals


def _midpoint_floors(points: np.ndarray) -> np.ndarray:
    """Per feature, the largest float32 at or below the exact midpoint of each point pair.

    A float32 ``x`` lies strictly above the exact midpoint ``m`` of two points exactly when
    ``x > floor32(m)``, so comparing with these floors snaps each value to its nearest point
    with ties to the lower one, however a float32 midpoint would have been rounded.
    """
    low = points[:, :-1].astype(np.float64)
    high = points[:, 1:].astype(np.float64)
    total = low + high
    # Knuth's TwoSum: the exact sum is total + error, so the exact midpoint lies below
    # total / 2 (which is exact: halving cannot round at float32 magnitudes) iff error < 0.
    high_part = total - low
    error = (low - (total - high_part)) + (high - high_part)
    midpoint = total / 2
    nearest = midpoint.astype(np.float32)
    widened = nearest.astype(np.float64)
    above = (widened > midpoint) | ((widened == midpoint) & (error < 0))
    floors: np.ndarray = np.where(
        above, np.nextafter(nearest, np.float32(-np.inf)), nearest
    ).astype(np.float32)
    return floors


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
            f"squeezer {item!r} needs a parameter, e.g. bit_depth:4, median:2, quantize:0.5, "
            "quantile:8, round:2"
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
    if name == "quantile":
        return QuantileGrid(_parse_int(name, param))
    if name == "round":
        return RoundDecimals(_parse_int(name, param))
    raise SqueezerSpecError(
        f"unknown squeezer {name!r}; known squeezers: bit_depth, median, quantize, quantile, round"
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
        if kind == QuantileGrid.kind:
            points = data.get("points")
            return QuantileGrid(
                int(data["levels"]),
                points=(
                    tuple(tuple(float(v) for v in row) for row in points)
                    if points is not None
                    else None
                ),
            )
        if kind == RoundDecimals.kind:
            return RoundDecimals(int(data["decimals"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SqueezerSpecError(f"malformed {kind} squeezer parameters: {exc}") from None
    raise SqueezerSpecError(f"unknown squeezer kind {kind!r}")
