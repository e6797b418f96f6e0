"""Random layers that draw per-sample parameters: Keras's image augmentation layers, time shifts and
masks for sequences, stochastic depth (DropPath) and AlphaDropout.

Every layer here is a :class:`RandomLayer`: in training its forward is
``transform(x, sample(x.shape))``, where ``sample`` draws the random parameters with one
documented call (``torch.rand``, ``torch.randint`` or ``bernoulli_``) from PyTorch's global
generator (``reglab.fit`` seeds it from the run's seed) and ``transform`` is plain tensor
arithmetic. In a population each member draws ``sample`` from its own generator, outside
``vmap``, and the vmapped ``transform`` gets it, so member i equals its standalone fit. In
evaluation mode the layers are the identity (RandomCrop center-crops, as Keras documents).

Images are PyTorch's channels-first (N, C, H, W) (or (N, H, W)): the last two dims are height and
width. Each sample draws its own parameters, as Keras 3 does (RandomCrop: one window for the
batch, as Keras 3 does). Geometric transforms follow Keras 3's ``keras.ops.image.affine_transform``
(``keras/src/backend/torch/image.py``): the output pixel at row y, column x takes the input at
column ``a0*x + a1*y + a2``, row ``b0*x + b1*y + b2`` (pixel centres at integer coordinates),
read with ``interpolation`` "bilinear" or "nearest" (``torch.round``: ties to even), and points
outside the image filled by ``fill_mode``:

- "reflect" ``(d c b a | a b c d | d c b a)``: mirrored about the edge of the last pixel (Keras's default);
- "constant" ``(k k k k | a b c d | k k k k)``: ``fill_value`` k;
- "wrap" ``(a b c d | a b c d | a b c d)``; "nearest" ``(a a a a | a b c d | d d d d)``.

>>> import torch
>>> x = torch.arange(16.0).view(1, 1, 4, 4)
>>> layer = RandomTranslation((0.25, 0.25), 0.0, fill_mode="constant")   # one row down, always
>>> layer(x)[0, 0]
tensor([[ 0.,  0.,  0.,  0.],
        [ 0.,  1.,  2.,  3.],
        [ 4.,  5.,  6.,  7.],
        [ 8.,  9., 10., 11.]])
>>> bool(torch.equal(layer.eval()(x), x))
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_number

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")


class RandomLayer(nn.Module):
    """A layer whose training forward is ``transform(x, sample(x.shape, x.dtype, x.device))``.

    ``sample`` draws from ``generator`` (PyTorch's global generator when None) and returns a
    tensor; ``transform`` is deterministic and batchable by ``torch.func.vmap``; ``inference``
    is the evaluation forward (the identity by default). ``member_settings`` names the attributes
    that only change what ``sample`` draws: members of one population may differ in them (each
    member samples with its own layer) and must agree on every other setting.
    """

    member_settings: tuple = ()

    def sample(self, shape: tuple, dtype: torch.dtype, device=None, generator=None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def transform(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x):
        if not self.training:
            return self.inference(x)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return self.transform(x, self.sample(tuple(x.shape), dtype, x.device))


# --------------------------------------------------------------------------------- validation

def _factor(value, name: str, owner: str, low_open: bool = False) -> tuple[float, float]:
    """Keras's factor: a number f gives [-|f|, |f|], a pair (lower, upper) that range (sorted);
    each number in [-1, 1] ((-1, 1] with ``low_open``)."""
    pair = isinstance(value, (tuple, list))
    if pair and len(value) != 2:
        raise ValueError(f"The {name!r} parameter of {owner} must be a float or a pair (lower, upper) of floats. "
                         f"Got {value!r} instead.")
    values = [check_number(v, name, owner, low=-1.0, high=1.0, low_open=low_open)
              for v in (value if pair else (value,))]
    if pair:
        lower, upper = sorted(values)
        return lower, upper
    return -abs(values[0]), abs(values[0])


def _image_size(shape, owner: str) -> tuple[int, int]:
    if len(shape) < 3:
        raise ValueError(f"{owner} needs images of shape (N, C, H, W) or (N, H, W) (channels first); "
                         f"got an input of shape {tuple(shape)}.")
    return shape[-2], shape[-1]


def _geometry(self, fill_mode, interpolation, fill_value):
    owner = type(self).__name__
    self.fill_mode = check_choice(fill_mode, "fill_mode", owner, FILL_MODES)
    self.interpolation = check_choice(interpolation, "interpolation", owner, INTERPOLATIONS)
    self.fill_value = check_number(fill_value, "fill_value", owner)


def _uniform(u, lower, upper):
    """Keras's ``random.uniform(minval=lower, maxval=upper)`` from ``u`` in [0, 1)."""
    return lower + (upper - lower) * u


# ------------------------------------------------------------------------- affine resampling

def affine_transform(x: torch.Tensor, transform: torch.Tensor, interpolation: str = "bilinear",
                     fill_mode: str = "constant", fill_value: float = 0.0) -> torch.Tensor:
    """Keras 3's ``keras.ops.image.affine_transform`` for channels-first images ``x`` (N, ..., H, W)
    and one transform per image, ``transform`` (N, 6) = ``[a0, a1, a2, b0, b1, b2]``: output pixel
    (row y, column x) = input at (row ``b0*x + b1*y + b2``, column ``a0*x + a1*y + a2``), bilinear
    or nearest, outside points filled by ``fill_mode`` (see the module's docstring).

    >>> import torch
    >>> x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])          # one 1 x 4 image: a b c d
    >>> shift = torch.tensor([[1.0, 0.0, -2.0, 0.0, 1.0, 0.0]])   # two pixels right
    >>> [affine_transform(x, shift, fill_mode=m)[0, 0].tolist() for m in ("reflect", "wrap", "nearest")]
    [[2.0, 1.0, 1.0, 2.0], [3.0, 4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 2.0]]
    """
    if not x.is_floating_point():     # integer images (0-255) come out as floats, as Keras's do
        x = x.to(torch.get_default_dtype())
    N, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    t = transform.to(x.dtype)
    cols = torch.arange(W, dtype=x.dtype, device=x.device).view(1, 1, W)
    rows = torch.arange(H, dtype=x.dtype, device=x.device).view(1, H, 1)
    a0, a1, a2, b0, b1, b2 = (t[:, k].view(N, 1, 1) for k in range(6))
    col = a0 * cols + a1 * rows + a2          # (N, H, W)
    row = b0 * cols + b1 * rows + b2
    flat = x.reshape(N, -1, H * W)
    out = None
    for r, wr in _nodes(row, interpolation):
        for c, wc in _nodes(col, interpolation):
            index = (_fix(r, H, fill_mode) * W + _fix(c, W, fill_mode)).view(N, 1, H * W)
            value = flat.gather(2, index.expand(-1, flat.shape[1], -1))
            if fill_mode == "constant":
                inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
                value = torch.where(inside.view(N, 1, H * W), value, fill_value)
            if wr is not None:
                value = (wr * wc).view(N, 1, H * W) * value
            out = value if out is None else out + value
    return out.reshape(x.shape)


def _nodes(coordinate, interpolation):
    """The integer neighbours of each coordinate and their weights (None: weight 1)."""
    if interpolation == "nearest":
        return [(torch.round(coordinate).long(), None)]
    lower = torch.floor(coordinate)
    upper_weight = coordinate - lower
    index = lower.long()
    return [(index, 1 - upper_weight), (index + 1, upper_weight)]


def _fix(index, size, fill_mode):
    """An index inside [0, size) for ``index`` under ``fill_mode`` (JAX's and Keras's index fixers)."""
    if fill_mode in ("constant", "nearest"):
        return index.clamp(0, size - 1)
    if fill_mode == "wrap":
        return torch.remainder(index, size)
    mirrored = _mirror(2 * index + 1, 2 * size + 1)   # reflect: about the pixel edges
    return torch.div(mirrored - 1, 2, rounding_mode="floor")


def _mirror(index, size):
    s = size - 1
    return torch.abs(torch.remainder(index + s, 2 * s) - s)


# ------------------------------------------------------------------------------ image layers

class RandomFlip(RandomLayer):
    """Keras's ``RandomFlip(mode="horizontal_and_vertical")``: each image is flipped with
    probability 0.5 (``torch.rand(N) <= 0.5``, Keras 3's draw) — "horizontal" left-right (the
    last dim), "vertical" top-bottom, "horizontal_and_vertical" both at once on the same draw,
    as Keras 3 does (tf.keras 2 drew the two flips independently).

    >>> import torch
    >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> torch.manual_seed(0) and RandomFlip("horizontal")(x)[0, 0]   # this draw flips
    tensor([[2., 1.],
            [4., 3.]])
    """

    def __init__(self, mode: str = "horizontal_and_vertical"):
        super().__init__()
        self.mode = check_choice(mode, "mode", type(self).__name__,
                                 ("horizontal", "vertical", "horizontal_and_vertical"))

    def sample(self, shape, dtype, device=None, generator=None):
        _image_size(shape, type(self).__name__)
        return torch.rand(shape[0], dtype=dtype, device=device, generator=generator) <= 0.5

    def transform(self, x, flips):
        dims = {"horizontal": (-1,), "vertical": (-2,), "horizontal_and_vertical": (-2, -1)}[self.mode]
        return torch.where(flips.view((-1,) + (1,) * (x.dim() - 1)), x.flip(dims), x)

    def extra_repr(self):
        return f"mode={self.mode!r}"


class RandomTranslation(RandomLayer):
    """Keras's ``RandomTranslation(height_factor, width_factor, fill_mode="reflect",
    interpolation="bilinear", fill_value=0.0)``.

    Each image is shifted down by ``uniform(lower, upper) * H`` pixels and right by
    ``uniform(lower, upper) * W`` (fractions of the size, not rounded; negative: up / left),
    where a factor f gives [-|f|, |f|] and a pair (lower, upper) that range, each in [-1, 1].
    Draw: ``torch.rand(2, N)`` (row 0 the heights, row 1 the widths); the transform is
    ``[1, 0, -dx, 0, 1, -dy]`` (Keras 3's translation matrix).
    """

    member_settings = ("height_factor", "width_factor")

    def __init__(self, height_factor, width_factor, fill_mode: str = "reflect", interpolation: str = "bilinear",
                 fill_value: float = 0.0):
        super().__init__()
        owner = type(self).__name__
        self.height_factor, self.width_factor = height_factor, width_factor
        self._height_range = _factor(height_factor, "height_factor", owner)
        self._width_range = _factor(width_factor, "width_factor", owner)
        _geometry(self, fill_mode, interpolation, fill_value)

    def sample(self, shape, dtype, device=None, generator=None):
        H, W = _image_size(shape, type(self).__name__)
        u = torch.rand(2, shape[0], dtype=dtype, device=device, generator=generator)
        dy = _uniform(u[0], *self._height_range) * H
        dx = _uniform(u[1], *self._width_range) * W
        return torch.stack([dx, dy], 1)

    def transform(self, x, shifts):
        one, zero = torch.ones_like(shifts[:, 0]), torch.zeros_like(shifts[:, 0])
        matrix = torch.stack([one, zero, -shifts[:, 0], zero, one, -shifts[:, 1]], 1)
        return affine_transform(x, matrix, self.interpolation, self.fill_mode, self.fill_value)

    def extra_repr(self):
        return (f"height_factor={self.height_factor!r}, width_factor={self.width_factor!r}, "
                f"fill_mode={self.fill_mode!r}, interpolation={self.interpolation!r}, fill_value={self.fill_value}")


class RandomRotation(RandomLayer):
    """Keras's ``RandomRotation(factor, fill_mode="reflect", interpolation="bilinear",
    fill_value=0.0)``: each image rotates about its centre by ``uniform(lower, upper) * 360``
    degrees, counter-clockwise for positive angles (a factor is a fraction of 2π: f gives
    [-|f|, |f|], a pair that range, in [-1, 1]). Draw: ``torch.rand(N)``; the transform is
    Keras 3's ``_compute_affine_matrix`` with centre ((W-1)/2, (H-1)/2):
    ``a0 = cos θ, a1 = -sin θ, b0 = sin θ, b1 = cos θ``, ``a2, b2`` keeping the centre in place.
    """

    member_settings = ("factor",)

    def __init__(self, factor, fill_mode: str = "reflect", interpolation: str = "bilinear", fill_value: float = 0.0):
        super().__init__()
        self.factor = factor
        self._range = _factor(factor, "factor", type(self).__name__)
        _geometry(self, fill_mode, interpolation, fill_value)

    def sample(self, shape, dtype, device=None, generator=None):
        _image_size(shape, type(self).__name__)
        u = torch.rand(shape[0], dtype=dtype, device=device, generator=generator)
        return _uniform(u, self._range[0] * 360.0, self._range[1] * 360.0)      # degrees

    def transform(self, x, degrees):
        H, W = x.shape[-2], x.shape[-1]
        theta = degrees * (math.pi / 180.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        cx, cy = 0.5 * (W - 1), 0.5 * (H - 1)
        a2 = cx - cx * cos + cy * sin
        b2 = cy - cx * sin - cy * cos
        matrix = torch.stack([cos, -sin, a2, sin, cos, b2], 1)
        return affine_transform(x, matrix, self.interpolation, self.fill_mode, self.fill_value)

    def extra_repr(self):
        return (f"factor={self.factor!r}, fill_mode={self.fill_mode!r}, interpolation={self.interpolation!r}, "
                f"fill_value={self.fill_value}")


class RandomZoom(RandomLayer):
    """Keras's ``RandomZoom(height_factor, width_factor=None, fill_mode="reflect",
    interpolation="bilinear", fill_value=0.0)``: each image is scaled about its centre by a zoom
    ``z = 1 + uniform(lower, upper)`` per axis; a positive factor zooms out (the content shrinks,
    z > 1 reads a larger area), a negative one zooms in ("a negative value means zooming in").
    Factors are in (-1, 1]; ``width_factor=None`` uses the height's zoom for both axes (aspect
    kept). Draw: ``torch.rand(1, N)`` (aspect kept) or ``torch.rand(2, N)`` (row 0 heights,
    row 1 widths); the transform is Keras 3's zoom matrix
    ``[zx, 0, (W-1)/2 * (1-zx), 0, zy, (H-1)/2 * (1-zy)]``.
    """

    member_settings = ("height_factor", "width_factor")

    def __init__(self, height_factor, width_factor=None, fill_mode: str = "reflect", interpolation: str = "bilinear",
                 fill_value: float = 0.0):
        super().__init__()
        owner = type(self).__name__
        self.height_factor, self.width_factor = height_factor, width_factor
        self._height_range = _factor(height_factor, "height_factor", owner, low_open=True)
        self._width_range = (None if width_factor is None else
                             _factor(width_factor, "width_factor", owner, low_open=True))
        self.keep_aspect = width_factor is None     # a setting: it changes the draw's shape
        _geometry(self, fill_mode, interpolation, fill_value)

    def sample(self, shape, dtype, device=None, generator=None):
        _image_size(shape, type(self).__name__)
        u = torch.rand(1 if self.keep_aspect else 2, shape[0], dtype=dtype, device=device, generator=generator)
        zy = 1.0 + _uniform(u[0], *self._height_range)
        zx = zy if self.keep_aspect else 1.0 + _uniform(u[1], *self._width_range)
        return torch.stack([zx, zy], 1)

    def transform(self, x, zooms):
        H, W = x.shape[-2], x.shape[-1]
        zx, zy = zooms[:, 0], zooms[:, 1]
        zero = torch.zeros_like(zx)
        matrix = torch.stack([zx, zero, (W - 1) / 2.0 * (1.0 - zx), zero, zy, (H - 1) / 2.0 * (1.0 - zy)], 1)
        return affine_transform(x, matrix, self.interpolation, self.fill_mode, self.fill_value)

    def extra_repr(self):
        return (f"height_factor={self.height_factor!r}, width_factor={self.width_factor!r}, "
                f"fill_mode={self.fill_mode!r}, interpolation={self.interpolation!r}, fill_value={self.fill_value}")


class RandomCrop(RandomLayer):
    """Keras's ``RandomCrop(height, width)``: in training a random ``height`` x ``width`` window,
    one location for the whole batch as in Keras 3 (draw: ``torch.randint(0, H - height + 1, (1,))``
    then the same for the width); in evaluation, and in training when the image is smaller than
    the window, the largest centred window of the target's aspect ratio, resized (bilinear,
    half-pixel centres) to ``height`` x ``width`` — what Keras documents (``smart_resize``'s
    window). Two choices where Keras 3 differs from its own documentation: Keras 3's evaluation
    forward returns the images uncropped (keras-team/keras#21868), and it crops randomly only
    when both sides are strictly larger than the window; here a side equal to the window has
    offset 0.

    >>> import torch
    >>> x = torch.arange(24.0).view(1, 1, 4, 6)
    >>> RandomCrop(2, 2).eval()(x)[0, 0]      # columns 1-4 (the centred 4 x 4 window), resized
    tensor([[ 4.5000,  6.5000],
            [16.5000, 18.5000]])
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        owner = type(self).__name__
        self.height = check_number(height, "height", owner, low=1, integer=True)
        self.width = check_number(width, "width", owner, low=1, integer=True)

    def _random(self, H, W):
        return H >= self.height and W >= self.width

    def sample(self, shape, dtype, device=None, generator=None):
        H, W = _image_size(shape, type(self).__name__)
        if not self._random(H, W):
            return torch.zeros(2, dtype=torch.long, device=device)   # nothing drawn: centre crop and resize
        top = torch.randint(0, H - self.height + 1, (1,), device=device, generator=generator)
        left = torch.randint(0, W - self.width + 1, (1,), device=device, generator=generator)
        return torch.cat([top, left])

    def transform(self, x, offsets):
        H, W = _image_size(x.shape, type(self).__name__)
        if not self._random(H, W):
            return self.inference(x)
        rows = offsets[0] + torch.arange(self.height, device=x.device)
        cols = offsets[1] + torch.arange(self.width, device=x.device)
        return x.index_select(-2, rows).index_select(-1, cols)

    def inference(self, x):
        H, W = _image_size(x.shape, type(self).__name__)
        h, w = self.height, self.width
        crop_h = max(min(H, int(float(W * h) / w)), 1)
        crop_w = max(min(W, int(float(H * w) / h)), 1)
        top, left = int(float(H - crop_h) / 2), int(float(W - crop_w) / 2)
        out = x[..., top:top + crop_h, left:left + crop_w]
        if (crop_h, crop_w) == (h, w):
            return out
        lead = out.shape[:-2]
        out = F.interpolate(out.reshape((-1, 1, crop_h, crop_w)), size=(h, w), mode="bilinear", align_corners=False)
        return out.reshape(lead + (h, w))

    def extra_repr(self):
        return f"height={self.height}, width={self.width}"


# --------------------------------------------------------------------------- sequence layers

def _time_axis(axis, owner):
    return check_choice(axis, "axis", owner, (1, -1))


class RandomTimeShift(RandomLayer):
    """Shifts each sequence in time by a whole number of steps drawn uniformly from
    [-max_shift, max_shift] (``torch.randint(-max_shift, max_shift + 1, (N,))``), filling with
    zeros: ``out[:, t] = x[:, t - shift]`` (positive: later), 0 where ``t - shift`` falls outside.
    ``axis`` is the time dim: 1 for (N, steps, features) or (N, steps), -1 for channels-first
    (N, C, steps).

    >>> import torch
    >>> layer = RandomTimeShift(1)
    >>> layer.transform(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), torch.tensor([1, -1]))
    tensor([[0., 1., 2.],
            [2., 3., 0.]])
    """

    member_settings = ("max_shift",)

    def __init__(self, max_shift: int, axis: int = 1):
        super().__init__()
        owner = type(self).__name__
        self.max_shift = check_number(max_shift, "max_shift", owner, low=0, integer=True)
        self.axis = _time_axis(axis, owner)

    def sample(self, shape, dtype, device=None, generator=None):
        return torch.randint(-self.max_shift, self.max_shift + 1, (shape[0],), device=device, generator=generator)

    def transform(self, x, shifts):
        xt = x.movedim(self.axis, 1)
        N, T, tail = xt.shape[0], xt.shape[1], (1,) * (xt.dim() - 2)
        source = torch.arange(T, device=x.device) - shifts.view(N, 1)        # (N, T)
        inside = ((source >= 0) & (source < T)).view((N, T) + tail)
        index = source.clamp(0, T - 1).view((N, T) + tail).expand(xt.shape)
        return torch.where(inside, xt.gather(1, index), 0.0).movedim(1, self.axis)

    def extra_repr(self):
        return f"max_shift={self.max_shift}, axis={self.axis}"


class RandomTimeMask(RandomLayer):
    """SpecAugment's time masking (Park et al. 2019), one mask per sample: a width w uniform in
    {0, ..., max_width} (at most the length T) and a start uniform in {0, ..., T - w}; the steps
    [start, start + w) are set to ``mask_value``. Draw: ``u = torch.rand(2, N)``,
    ``w = floor(u[0] * (max_width + 1))``, ``start = floor(u[1] * (T - w + 1))``. ``axis`` as
    :class:`RandomTimeShift`.
    """

    member_settings = ("max_width",)

    def __init__(self, max_width: int, mask_value: float = 0.0, axis: int = 1):
        super().__init__()
        owner = type(self).__name__
        self.max_width = check_number(max_width, "max_width", owner, low=0, integer=True)
        self.mask_value = check_number(mask_value, "mask_value", owner)
        self.axis = _time_axis(axis, owner)

    def sample(self, shape, dtype, device=None, generator=None):
        T = shape[self.axis]
        u = torch.rand(2, shape[0], dtype=dtype, device=device, generator=generator)
        width = torch.floor(u[0] * (self.max_width + 1)).clamp(max=min(self.max_width, T))
        start = torch.minimum(torch.floor(u[1] * (T - width + 1)), T - width)
        return torch.stack([start, width], 1)

    def transform(self, x, spans):
        xt = x.movedim(self.axis, 1)
        N, T, tail = xt.shape[0], xt.shape[1], (1,) * (xt.dim() - 2)
        steps = torch.arange(T, dtype=spans.dtype, device=x.device).view(1, T)
        start, width = spans[:, :1], spans[:, 1:]
        masked = ((steps >= start) & (steps < start + width)).view((N, T) + tail)
        return torch.where(masked, self.mask_value, xt).movedim(1, self.axis)

    def extra_repr(self):
        return f"max_width={self.max_width}, mask_value={self.mask_value}, axis={self.axis}"


# ------------------------------------------------------------------------ DropPath, AlphaDropout

class DropPath(RandomLayer):
    """Stochastic depth for residual branches, timm's ``drop_path``: each sample's branch is
    dropped with probability ``p`` (mask ``empty((N, 1, ..., 1)).bernoulli_(1 - p)``, divided by
    ``1 - p`` when ``scale_by_keep``), so ``E[out] = x``. Use it on the branch, not the sum:
    ``x + self.drop_path(self.block(x))``; :func:`drop_path_rates` gives a rate per block.
    ``p = 0`` draws nothing.

    >>> import torch
    >>> torch.manual_seed(0) and DropPath(0.5)(torch.ones(4, 2))
    tensor([[0., 0.],
            [0., 0.],
            [2., 2.],
            [0., 0.]])
    """

    member_settings = ("p", "scale_by_keep")

    def __init__(self, p: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        owner = type(self).__name__
        self.p = check_number(p, "p", owner, low=0, high=1)
        self.scale_by_keep = check_choice(scale_by_keep, "scale_by_keep", owner, (True, False))

    def sample(self, shape, dtype, device=None, generator=None):
        mask_shape = (shape[0],) + (1,) * (len(shape) - 1)
        if self.p == 0:
            return torch.ones(mask_shape, dtype=dtype, device=device)
        keep = 1.0 - self.p
        mask = torch.empty(mask_shape, dtype=dtype, device=device).bernoulli_(keep, generator=generator)
        if keep > 0 and self.scale_by_keep:
            mask.div_(keep)
        return mask

    def transform(self, x, mask):
        return x * mask

    def extra_repr(self):
        return f"p={self.p}" + ("" if self.scale_by_keep else ", scale_by_keep=False")


def drop_path_rates(p_max: float, depth: int) -> list[float]:
    """timm's linear stochastic-depth rule: block i of ``depth`` drops its branch with rate
    ``p_max * i / (depth - 1)`` (``torch.linspace(0, p_max, depth)``, here in float64).

    >>> drop_path_rates(0.2, 5)
    [0.0, 0.05, 0.1, 0.15000000000000002, 0.2]
    """
    p_max = check_number(p_max, "p_max", "drop_path_rates", low=0, high=1)
    depth = check_number(depth, "depth", "drop_path_rates", low=1, integer=True)
    return torch.linspace(0.0, p_max, depth, dtype=torch.float64).tolist()


class AlphaDropout(RandomLayer):
    """Keras's ``AlphaDropout(rate)`` for SELU networks: keeps the inputs' mean and variance.

    With ``alpha_p = -1.7580993408473766`` (SELU's ``-scale * alpha``),
    ``a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5`` and ``b = -a * alpha_p * rate``:
    ``out = a * (x * keep + alpha_p * (1 - keep)) + b`` with ``keep`` ~ Bernoulli(1 - rate) per
    element. Drawn and computed as ``torch.nn.AlphaDropout`` does (``empty(shape).bernoulli_(1 -
    rate)``, then ``x * (keep * a) + ((keep - 1) * alpha * a + alpha * a * rate)``, the same
    formula), so the two agree exactly on contiguous inputs. ``rate`` in [0, 1) (at 1 Keras's a
    is infinite).
    """

    member_settings = ("rate",)
    ALPHA = 1.7580993408473766   # -alpha_p

    def __init__(self, rate: float):
        super().__init__()
        self.rate = check_number(rate, "rate", type(self).__name__, low=0, high=1, high_open=True)

    def sample(self, shape, dtype, device=None, generator=None):
        """(2, *shape): the multiplier and the offset."""
        if self.rate == 0:
            return torch.stack([torch.ones(shape, dtype=dtype, device=device),
                                torch.zeros(shape, dtype=dtype, device=device)])
        p, alpha = self.rate, self.ALPHA
        a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
        keep = torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator)
        offset = keep.add(-1).mul_(alpha * a).add_(alpha * a * p)
        return torch.stack([keep.mul_(a), offset])

    def transform(self, x, noise):
        return x * noise[0] + noise[1]

    def extra_repr(self):
        return f"rate={self.rate}"
