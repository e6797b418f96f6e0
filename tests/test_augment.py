"""Augmentation layers, DropPath and AlphaDropout (reglab.augment).

Each layer against Keras's documented behaviour on hand-made inputs (a translation by exactly one
pixel, a rotation by exactly 90°, a zoom by a fixed factor, a crop window, each fill mode's
pattern), the affine resampling against Keras 3's NumPy backend (``np.pad`` +
``scipy.ndimage.map_coordinates``), DropPath against timm's ``drop_path``, AlphaDropout against
Keras's formula in NumPy and ``torch.nn.AlphaDropout``; identity in evaluation, one draw per
sample; population members equal to their standalone fits (float64); the Keras layer lines.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

import reglab
from reglab.augment import (AlphaDropout, DropPath, RandomCrop, RandomFlip, RandomLayer, RandomRotation, RandomTimeMask,
                            RandomTimeShift, RandomTranslation, RandomZoom, affine_transform, drop_path_rates)
from reglab.population import ModulePopulation, engine
from reglab.study import ModelError, build

from test_any_model import check_family, float64, images, sequences  # noqa: F401 - float64 is a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def t(a):
    return torch.as_tensor(a, dtype=torch.float64)


def ramp(h, w, batch=1):
    """Images whose pixel (row, column) is 10 * row + column: (batch, 1, h, w)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return t(np.broadcast_to(10.0 * rows + cols, (batch, 1, h, w)).copy())


# ------------------------------------------------------------- Keras 3's NumPy backend, written out

def keras_numpy_affine(image, transform, interpolation, fill_mode, fill_value):
    """Keras 3's ``affine_transform`` of the NumPy backend (keras/src/backend/numpy/image.py) for
    one channels-first image (C, H, W): each output pixel's input coordinates, the image padded
    with ``np.pad`` so that every neighbour exists, then ``scipy.ndimage.map_coordinates``."""
    a0, a1, a2, b0, b1, b2 = transform
    _, H, W = image.shape
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    coords = [b0 * x + b1 * y + b2, a0 * x + a1 * y + a2]
    padding = [(max(-int(np.floor(c.min())) + 1, 0), max(int(np.ceil(c.max())) + 1 - size, 0))
               for c, size in zip(coords, (H, W))]
    shifted = [c + p[0] for p, c in zip(padding, coords)]
    pad_mode = {"nearest": "edge", "reflect": "symmetric"}.get(fill_mode, fill_mode)
    extra = {"constant_values": fill_value} if fill_mode == "constant" else {}
    order = {"nearest": 0, "bilinear": 1}[interpolation]
    return np.stack([scipy.ndimage.map_coordinates(np.pad(channel, padding, mode=pad_mode, **extra), shifted,
                                                   order=order, mode=fill_mode, cval=fill_value) for channel in image])


@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "constant", "nearest"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_transform_equals_keras_numpy_backend(fill_mode, interpolation):
    g = np.random.default_rng(0)
    for _ in range(10):
        H, W = g.integers(3, 9, size=2)
        image = g.normal(size=(2, H, W))
        angle, zoom = g.uniform(-np.pi, np.pi), g.uniform(0.5, 2.0)
        matrix = [zoom * np.cos(angle), -zoom * np.sin(angle), g.uniform(-5, 5),
                  zoom * np.sin(angle), zoom * np.cos(angle), g.uniform(-5, 5)]
        mine = affine_transform(t(image[None]), t([matrix]), interpolation, fill_mode, 0.7)[0]
        np.testing.assert_allclose(mine.numpy(), keras_numpy_affine(image, matrix, interpolation, fill_mode, 0.7),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("fill_mode, expected", [
    ("reflect", [2, 1, 1, 2]),      # (d c b a | a b c d | d c b a)
    ("wrap", [3, 4, 1, 2]),         # (a b c d | a b c d | a b c d)
    ("nearest", [1, 1, 1, 2]),      # (a a a a | a b c d | d d d d)
    ("constant", [-1, -1, 1, 2]),   # (k k k k | a b c d | k k k k)
])
def test_each_fill_mode_extends_the_image_as_keras_documents(fill_mode, expected):
    row = t([[[[1.0, 2.0, 3.0, 4.0]]]])                                # a b c d, shifted two pixels right
    layer = RandomTranslation(0.0, (0.5, 0.5), fill_mode=fill_mode, fill_value=-1.0)
    assert layer(row)[0, 0, 0].tolist() == expected


# -------------------------------------------------------------------------------- translation

@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_translation_by_exactly_one_pixel(interpolation):
    """height_factor=(0.25, 0.25) on a height of 4 is a shift of 0.25 * 4 = 1 pixel down;
    negative factors shift up / left (Keras: "a negative value means shifting image up")."""
    x = ramp(4, 4)
    down = RandomTranslation((0.25, 0.25), 0.0, fill_mode="constant", fill_value=-1.0, interpolation=interpolation)
    expected = torch.full_like(x, -1.0)
    expected[..., 1:, :] = x[..., :-1, :]
    assert torch.equal(down(x), expected)
    left = RandomTranslation(0.0, (-0.25, -0.25), fill_mode="constant", interpolation=interpolation)
    expected = torch.zeros_like(x)
    expected[..., :, :-1] = x[..., :, 1:]
    assert torch.equal(left(x), expected)


def test_translation_draws_a_fraction_of_the_size_per_sample():
    """Shifts are uniform(lower, upper) times the size (not rounded): torch.rand(2, N), heights first."""
    layer = RandomTranslation(0.2, (-0.1, 0.3))
    torch.manual_seed(3)
    shifts = layer.sample((5, 1, 10, 20), torch.float64)
    torch.manual_seed(3)
    u = torch.rand(2, 5, dtype=torch.float64)
    torch.testing.assert_close(shifts[:, 1], (-0.2 + 0.4 * u[0]) * 10, rtol=0, atol=1e-12)
    torch.testing.assert_close(shifts[:, 0], (-0.1 + 0.4 * u[1]) * 20, rtol=0, atol=1e-12)
    x = ramp(10, 20, batch=5)
    torch.manual_seed(3)
    out = layer(x)
    for i in range(5):   # each image moved by its own shift
        matrix = t([[1, 0, -shifts[i, 0], 0, 1, -shifts[i, 1]]])
        torch.testing.assert_close(out[i:i + 1], affine_transform(x[i:i + 1], matrix, "bilinear", "reflect"))


# ------------------------------------------------------------------------------------- flip

def test_flip_modes_on_hand_made_images():
    x = t([[[[1, 2], [3, 4]]], [[[1, 2], [3, 4]]]])
    flips = torch.tensor([True, False])
    assert RandomFlip("horizontal").transform(x, flips)[:, 0].tolist() == [[[2, 1], [4, 3]], [[1, 2], [3, 4]]]
    assert RandomFlip("vertical").transform(x, flips)[:, 0].tolist() == [[[3, 4], [1, 2]], [[1, 2], [3, 4]]]
    assert RandomFlip().transform(x, flips)[:, 0].tolist() == [[[4, 3], [2, 1]], [[1, 2], [3, 4]]]


def test_flip_draws_one_uniform_per_sample_and_flips_half():
    layer = RandomFlip("horizontal")
    x = ramp(3, 3, batch=4000)
    torch.manual_seed(0)
    out = layer(x)
    torch.manual_seed(0)
    flipped = torch.rand(4000, dtype=torch.float64) <= 0.5       # Keras 3: uniform <= 0.5
    assert torch.equal(out[flipped], x[flipped].flip(-1)) and torch.equal(out[~flipped], x[~flipped])
    assert abs(flipped.double().mean().item() - 0.5) < 0.03


# --------------------------------------------------------------------------------- rotation

@pytest.mark.parametrize("size", [3, 4])
def test_rotation_by_exactly_90_degrees(size):
    """factor=(0.25, 0.25) is a quarter of 2π: counter-clockwise for positive, as np.rot90."""
    x = ramp(size, size, batch=2)
    quarter = RandomRotation((0.25, 0.25), interpolation="nearest")
    assert torch.equal(quarter(x), torch.rot90(x, 1, (-2, -1)))
    bilinear = RandomRotation((0.25, 0.25), fill_mode="constant")
    torch.testing.assert_close(bilinear(x), torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-12)
    clockwise = RandomRotation((-0.25, -0.25), interpolation="nearest")
    assert torch.equal(clockwise(x), torch.rot90(x, -1, (-2, -1)))


def test_rotation_angles_are_a_fraction_of_360_degrees():
    torch.manual_seed(1)
    degrees = RandomRotation((-0.1, 0.2)).sample((1000, 1, 5, 5), torch.float64)
    assert degrees.min() >= -36 and degrees.max() < 72 and degrees.std() > 20


# ------------------------------------------------------------------------------------- zoom

def test_zoom_in_by_a_fixed_factor():
    """height_factor=(-0.5, -0.5): zoom 1 - 0.5 about the centre (zooming in: "a negative value
    means zooming in"); on a ramp, bilinear reading is exact: out(y, x) = ramp at 0.5 * (y - 2) + 2."""
    x = ramp(5, 5)
    out = RandomZoom((-0.5, -0.5))(x)
    coords = 0.5 * (torch.arange(5.0, dtype=torch.float64) - 2) + 2
    torch.testing.assert_close(out[0, 0], 10 * coords.view(5, 1) + coords.view(1, 5), rtol=0, atol=1e-12)


def test_zoom_out_by_a_fixed_factor_per_axis():
    """Zoom 2 on the height only (width_factor=0): rows read at 2 * (y - 2) + 2 = -2, 0, 2, 4, 6."""
    x = ramp(5, 5)
    out = RandomZoom((1.0, 1.0), 0.0, fill_mode="constant", fill_value=-1.0)(x)[0, 0]
    assert out[0].tolist() == [-1.0] * 5 and out[4].tolist() == [-1.0] * 5
    assert torch.equal(out[1:4], x[0, 0, [0, 2, 4]])


def test_zoom_keeps_the_aspect_without_width_factor():
    torch.manual_seed(0)
    zooms = RandomZoom(0.3).sample((100, 1, 4, 4), torch.float64)
    assert torch.equal(zooms[:, 0], zooms[:, 1]) and zooms.min() >= 0.7 and zooms.max() < 1.3
    zooms = RandomZoom(0.3, (-0.2, -0.1)).sample((100, 1, 4, 4), torch.float64)
    assert zooms[:, 0].max() < 0.9 and zooms[:, 0].min() >= 0.8 and zooms[:, 1].max() > 1.1


# ------------------------------------------------------------------------------------- crop

def test_crop_takes_one_random_window_for_the_batch():
    x = torch.randn(3, 2, 6, 7, dtype=torch.float64)
    layer = RandomCrop(4, 3)
    seen = set()
    for seed in range(150):
        torch.manual_seed(seed)
        out = layer(x)
        torch.manual_seed(seed)
        top, left = torch.randint(0, 3, (1,)).item(), torch.randint(0, 5, (1,)).item()
        assert torch.equal(out, x[..., top:top + 4, left:left + 3])
        seen.add((top, left))
    assert len(seen) == 15   # every window is reachable


def test_crop_in_evaluation_takes_the_centre_window_of_the_target_aspect_and_resizes():
    """What Keras documents (smart_resize's window): the largest centred window with the target's
    aspect ratio, resized bilinearly (half-pixel centres) to the target."""
    x = ramp(6, 8)
    assert torch.equal(RandomCrop(6, 6).eval()(x), x[..., :, 1:7])
    out = RandomCrop(3, 3).eval()(x)            # 6 x 6 window at column 1, halved: pixel centres 0.5, 2.5, 4.5
    centres = torch.tensor([0.5, 2.5, 4.5], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], 10 * centres.view(3, 1) + (centres + 1).view(1, 3), rtol=0, atol=1e-12)
    small = RandomCrop(8, 8).train()(ramp(4, 4))    # smaller than the window: resized, in training too
    assert small.shape == (1, 1, 8, 8)


# ------------------------------------------------------------------------------ sequences

def test_time_shift_fills_with_zeros():
    x = t([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]).unsqueeze(-1)      # (N, steps, 1)
    out = RandomTimeShift(2).transform(x, torch.tensor([1, -2, 0]))[..., 0]
    assert out.tolist() == [[0, 1, 2, 3], [3, 4, 0, 0], [1, 2, 3, 4]]
    channels_first = RandomTimeShift(2, axis=-1).transform(x.transpose(1, 2), torch.tensor([1, -2, 0]))
    assert torch.equal(channels_first[:, 0], out)
    torch.manual_seed(0)
    shifts = RandomTimeShift(2).sample((2000, 4, 1), torch.float64)
    assert set(shifts.tolist()) == {-2, -1, 0, 1, 2}


def test_time_mask_masks_one_span_per_sample():
    x = torch.ones(500, 10, 3, dtype=torch.float64)
    torch.manual_seed(0)
    out = RandomTimeMask(4, mask_value=-1.0)(x)
    masked = (out == -1).all(-1)
    widths = masked.sum(1)
    assert widths.max() == 4 and widths.min() == 0 and len(set(widths.tolist())) == 5
    for row, width in zip(masked, widths):    # one contiguous span
        where = row.nonzero().flatten()
        assert width == 0 or (where[-1] - where[0] + 1) == width
    assert masked[:, 0].any() and masked[:, -1].any()


# ------------------------------------------------------------------------- all the layers

def all_layers():
    return [RandomFlip(), RandomTranslation(0.2, 0.2), RandomRotation(0.1), RandomZoom(0.2), RandomCrop(5, 5),
            DropPath(0.5), AlphaDropout(0.3)]


def test_every_layer_is_the_identity_in_evaluation():
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    for layer in all_layers() + [RandomTimeShift(2), RandomTimeMask(3)]:
        if isinstance(layer, RandomCrop):
            continue   # evaluation center-crops (tested above)
        assert torch.equal(layer.eval()(x), x), layer
    model = nn.Sequential(*all_layers()[:4]).eval()
    assert torch.equal(model(x), x)


def test_every_sample_draws_its_own_parameters():
    images = ramp(6, 6, batch=64).expand(64, 2, 6, 6).contiguous()
    steps = torch.arange(10.0, dtype=torch.float64).view(1, 10, 1).expand(64, 10, 2).contiguous()
    torch.manual_seed(0)
    for layer in all_layers() + [RandomTimeShift(2), RandomTimeMask(3)]:
        out = layer.train()(steps if isinstance(layer, (RandomTimeShift, RandomTimeMask)) else images)
        distinct = len({tuple(o.flatten().tolist()) for o in out})
        if isinstance(layer, RandomCrop):
            assert distinct == 1      # one window for the batch, as Keras 3
        else:    # 2 flips or masks, 5 time shifts, more of the rest
            assert distinct >= {RandomFlip: 2, DropPath: 2, RandomTimeShift: 5}.get(type(layer), 10), layer


def test_the_layers_draw_from_the_global_generator_only_when_training():
    x = ramp(6, 6, batch=3)
    for layer in all_layers():
        torch.manual_seed(0)
        layer.eval()(x)
        after = torch.rand(3)
        torch.manual_seed(0)
        assert torch.equal(after, torch.rand(3)), layer     # evaluation drew nothing
        torch.manual_seed(0)
        a = layer.train()(x)
        torch.manual_seed(0)
        assert torch.equal(layer(x), a), layer      # same seed, same draw


def test_gradients_flow_through_the_transforms():
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    for layer in all_layers():
        layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("make, error, words", [
    (lambda: RandomTranslation(1.5, 0.1), ValueError, ["'height_factor'", "RandomTranslation", "[-1.0, 1.0]", "1.5"]),
    (lambda: RandomTranslation(0.1, (0.1, 0.2, 0.3)), ValueError, ["'width_factor'", "pair (lower, upper)"]),
    (lambda: RandomTranslation("0.1", 0.1), TypeError, ["'height_factor'", "'0.1'"]),
    (lambda: RandomZoom(-1.0), ValueError, ["'height_factor'", "(-1.0, 1.0]"]),
    (lambda: RandomRotation(0.1, fill_mode="mirror"), ValueError, ["'fill_mode'", "'reflect'", "'mirror'"]),
    (lambda: RandomRotation(0.1, interpolation="bicubic"), ValueError, ["'interpolation'", "'bilinear'"]),
    (lambda: RandomFlip("diagonal"), ValueError, ["'mode'", "'horizontal'"]),
    (lambda: RandomCrop(0, 3), ValueError, ["'height'", "RandomCrop"]),
    (lambda: RandomCrop(2.5, 3), TypeError, ["'height'", "an int"]),
    (lambda: RandomTimeShift(-1), ValueError, ["'max_shift'"]),
    (lambda: RandomTimeMask(2, axis=2), ValueError, ["'axis'"]),
    (lambda: DropPath(1.5), ValueError, ["'p'", "DropPath"]),
    (lambda: AlphaDropout(1.0), ValueError, ["'rate'", "AlphaDropout", "[0, 1)"]),
    (lambda: drop_path_rates(0.1, 0), ValueError, ["'depth'", "drop_path_rates"]),
    (lambda: RandomFlip()(torch.zeros(4, 5)), ValueError, ["RandomFlip", "(N, C, H, W)", "(4, 5)"]),
])
def test_invalid_arguments_are_refused_where_they_enter(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------------- DropPath

def timm_drop_path(x, drop_prob, training, scale_by_keep=True):
    """timm.layers.drop.drop_path (timm 1.0), written out."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


@pytest.mark.parametrize("p, scale", [(0.0, True), (0.3, True), (0.3, False), (1.0, True)])
def test_drop_path_equals_timm(p, scale):
    x = torch.randn(16, 3, 4, dtype=torch.float64)
    torch.manual_seed(5)
    mine = DropPath(p, scale_by_keep=scale)(x)
    after_mine = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(mine, timm_drop_path(x, p, True, scale))
    assert torch.equal(after_mine, torch.rand(1))      # the same draws: p = 0 draws nothing


def test_drop_path_drops_whole_samples_and_keeps_the_expected_value():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2, dtype=torch.float64)
    out = DropPath(0.25)(x)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)    # one mask value per sample
    assert set(per_sample[:, 0].unique().tolist()) == {0.0, 1 / 0.75}
    assert abs(out.mean().item() - 1.0) < 0.02 and abs((per_sample[:, 0] == 0).double().mean().item() - 0.25) < 0.01


def test_drop_path_rates_follow_timms_linear_rule():
    assert drop_path_rates(0.1, 1) == [0.0]
    rates = drop_path_rates(0.3, 7)
    assert rates[0] == 0.0 and rates[-1] == 0.3 and len(rates) == 7
    np.testing.assert_allclose(rates, torch.linspace(0, 0.3, 7).tolist(), atol=1e-7)
    np.testing.assert_allclose(np.diff(rates), 0.05, atol=1e-12)


# ----------------------------------------------------------------------------- AlphaDropout

def keras_alpha_dropout(x, keep, rate):
    """Keras 3 AlphaDropout.call with the kept elements given."""
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * alpha_p ** 2)) ** -0.5
    b = -a * alpha_p * rate
    return a * (x * keep + alpha_p * (1 - keep)) + b


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.7])
def test_alpha_dropout_is_kerass_formula(rate):
    x = torch.randn(50, 8, dtype=torch.float64)
    torch.manual_seed(2)
    out = AlphaDropout(rate)(x)
    torch.manual_seed(2)
    keep = torch.empty(50, 8, dtype=torch.float64).bernoulli_(1 - rate).numpy()
    np.testing.assert_allclose(out.numpy(), keras_alpha_dropout(x.numpy(), keep, rate), atol=1e-12, rtol=0)
    torch.manual_seed(2)
    assert torch.equal(out, nn.AlphaDropout(rate)(x))       # and torch's, to the bit


def test_alpha_dropout_keeps_mean_and_variance_of_selu_activations():
    torch.manual_seed(0)
    x = torch.randn(400000, dtype=torch.float64)
    out = AlphaDropout(0.2)(x)
    assert abs(out.mean().item()) < 0.01 and abs(out.var().item() - 1.0) < 0.01
    assert torch.equal(AlphaDropout(0.0)(x), x)


# ------------------------------------------------------------------------------ populations

class Block(nn.Module):
    def __init__(self, channels, p):
        super().__init__()
        self.conv, self.drop_path = nn.Conv2d(channels, channels, 3, padding=1), DropPath(p)

    def forward(self, x):
        return x + self.drop_path(torch.relu(self.conv(x)))


class AugmentedCNN(nn.Module):
    """RandomFlip + RandomTranslation (+ rotation, zoom, crop), DropPath in residual blocks
    (timm's linear rule), AlphaDropout before the head."""

    def __init__(self, shift=0.1, drop_path=0.0, rotation=0.05, alpha=0.0):
        super().__init__()
        self.augment = nn.Sequential(RandomFlip("horizontal"), RandomTranslation(shift, shift, fill_mode="constant"),
                                     RandomRotation(rotation), RandomZoom(0.1, fill_mode="wrap",
                                                                          interpolation="nearest"), RandomCrop(6, 6))
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(3, p) for p in drop_path_rates(drop_path, 2)])
        self.drop, self.out = AlphaDropout(alpha), nn.Linear(3 * 36, 1)

    def forward(self, x):
        return self.out(self.drop(self.blocks(self.stem(self.augment(x))).flatten(1)))


class AugmentedSequence(nn.Module):
    def __init__(self, shift=1, width=2):
        super().__init__()
        self.shift, self.mask = RandomTimeShift(shift), RandomTimeMask(width)
        self.conv, self.out = nn.Conv1d(4, 5, 3), nn.Linear(20, 1)

    def forward(self, x):
        return self.out(torch.relu(self.conv(self.mask(self.shift(x)).transpose(1, 2))).flatten(1))


def test_population_member_equals_fit_with_augmentation_and_drop_path(float64):
    configs = [dict(shift=0.0, drop_path=0.0, alpha=0.0), dict(shift=0.2, drop_path=0.5, rotation=0.2, alpha=0.1)]
    pop = engine.make_population([AugmentedCNN(**c) for c in configs])
    assert isinstance(pop, ModulePopulation)     # one population: the members differ in what they draw only
    assert sum(isinstance(m, RandomLayer) for m in pop.base.modules()) == 8
    check_family(AugmentedCNN, images(), configs, seeds=(0, 1), epochs=3)


def test_population_member_equals_fit_with_time_shifts_and_masks(float64):
    check_family(AugmentedSequence, sequences(), [dict(shift=0, width=0), dict(shift=2, width=3)], epochs=3)


def test_population_draws_each_members_parameters_from_its_own_stream():
    """A population's training forward gives member i what its own layers draw from its generator."""
    models = [nn.Sequential(RandomTranslation(f, f), nn.Conv2d(1, 1, 1)) for f in (0.1, 0.3)]
    pop = ModulePopulation(models)
    x = torch.randn(5, 1, 6, 6)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    out, _ = pop.forward(x, engine.ForwardMode(True, gens), shared=True)
    for i, (model, seed) in enumerate(zip(models, (3, 4))):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.testing.assert_close(out[i], model.train()(x), rtol=0, atol=1e-6)
    assert not torch.allclose(out[0], out[1], atol=1e-3)


# ----------------------------------------------------------------------------- Keras lines

def test_keras_lines_build_the_augmentation_layers():
    model = build(["RandomFlip('horizontal', input_shape=(1, 8, 8))",
                   "RandomTranslation(0.1, (-0.2, 0.3), fill_mode='constant', fill_value=0.5)",
                   "RandomRotation(0.1, interpolation='nearest')", "RandomZoom(-0.2)", "RandomCrop(6, 5)",
                   "Conv2D(2, 3)", "Flatten()", "AlphaDropout(0.1)", "Dense(1, activation='sigmoid')"],
                  (1, 8, 8), task="binary")
    flip, shift, rotate, zoom, crop, conv, _, alpha, dense = model
    assert flip.mode == "horizontal"
    assert shift._height_range == (-0.1, 0.1) and shift._width_range == (-0.2, 0.3)
    assert (shift.fill_mode, shift.fill_value, shift.interpolation) == ("constant", 0.5, "bilinear")
    assert rotate.interpolation == "nearest" and rotate.fill_mode == "reflect"    # Keras's default fill
    assert zoom.keep_aspect and zoom._height_range == (-0.2, 0.2)
    assert (crop.height, crop.width) == (6, 5) and dense.in_features == 2 * 4 * 3
    assert isinstance(alpha, AlphaDropout) and alpha.rate == 0.1
    assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 1)


@pytest.mark.parametrize("lines, shape, words", [
    (["RandomFlip('horizontal', seed=42)"], (1, 8, 8), ["seed is not supported", "remove seed=42"]),
    (["RandomTranslation(0.1)"], (1, 8, 8), ["RandomTranslation needs width_factor"]),
    (["RandomZoom(-1.0)"], (1, 8, 8), ["'height_factor' parameter of RandomZoom", "(-1.0, 1.0]"]),
    (["RandomRotation(0.1, fill_mode='mirror')"], (1, 8, 8), ["'fill_mode'", "'mirror'"]),
    (["AlphaDropout(0.1, noise_shape=(1, 4))"], (4,), ["noise_shape is not supported"]),
    (["AlphaDropout(1.0)"], (4,), ["rate must be a number in [0, 1)"]),
    (["Dense(4)", "RandomFlip()"], (2,), ["RandomFlip needs images", "(channels, height, width)"]),
])
def test_keras_lines_refuse_what_they_cannot_build(lines, shape, words):
    with pytest.raises(ModelError) as info:
        build(lines + ["Flatten()", "Dense(1)"], shape)
    for word in words:
        assert word in str(info.value)
    assert "\n" not in str(info.value)


def test_a_keras_line_model_with_augmentation_trains_as_a_population(float64):
    lines = ["RandomFlip('horizontal')", "RandomTranslation(0.1, 0.1)", "Conv2D(2, 3)", "Flatten()", "Dense(1)"]
    check_family(lambda: build(lines, (1, 8, 8)), images(), [{}], seeds=(0, 1), epochs=2)


def test_exported_names():
    for name in ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomCrop", "RandomTimeShift",
                 "RandomTimeMask", "DropPath", "drop_path_rates", "AlphaDropout"):
        assert getattr(reglab, name) is getattr(reglab.augment, name)
    assert math.isclose(AlphaDropout.ALPHA, 1.6732632423543772848170429916717 * 1.0507009873554804934193349852946)
