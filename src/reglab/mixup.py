"""Mixup and CutMix as a training option: timm's ``Mixup`` in mode ``"batch"``, drawn per member.

Per training batch ``x`` of B rows (mixed with its reverse, ``x.flip(0)``, as timm mixes it):

- with probability ``prob`` the batch is mixed, else it trains as it is (``lam = 1``);
- when both ``mixup_alpha`` and ``cutmix_alpha`` are > 0, CutMix is chosen with probability
  ``switch_prob``, else Mixup; otherwise the one whose alpha is > 0;
- ``lam ~ Beta(alpha, alpha)`` of the chosen kind;
- Mixup: ``x' = lam * x + (1 - lam) * x.flip(0)``;
- CutMix: a box of the last two dims (height, width) takes ``x.flip(0)``'s pixels. timm's
  ``rand_bbox``: ``cut = int(H * sqrt(1 - lam)), int(W * sqrt(1 - lam))``, a centre ``cy, cx``
  uniform over the pixels, the box ``[cy - cut_h // 2, cy + cut_h // 2)`` (and so for x) clipped
  to the image; with ``correct_lam`` (timm's default) ``lam = 1 - box area / (H * W)``;
- the labels are mixed with the same ``lam``. For classification the loss of every row is
  ``lam * L(out, y) + (1 - lam) * L(out, y.flip(0))``; cross-entropy (softmax or sigmoid) is
  linear in its target, so this equals the loss against timm's soft target
  ``lam * onehot(y) + (1 - lam) * onehot(y.flip(0))`` (``mixup_target``), label smoothing
  included, and it works for class weights (each term weighs its own label), sample weights
  (each term its own row's) and a callable loss. For regression the targets themselves are
  mixed: ``L(out, lam * y + (1 - lam) * y.flip(0))``. The training metric is mixed the same way
  (accuracy ``lam * acc(out, y) + (1 - lam) * acc(out, y.flip(0))``); validation is never mixed.

A batch of odd size mixes its middle row with itself (timm asks for even batches). The random
numbers of a run come from its own NumPy generator (PCG64), seeded with the fourth 63-bit word of
``numpy.random.SeedSequence(seed)`` (:class:`reglab.presets.Streams` uses the first three for
initialisation, shuffling and noise), drawn per batch in timm's order: the ``prob`` test, the
switch test, ``lam``, then the box centre (row, column). So a population member draws exactly what
``reglab.fit`` with its seed draws, whatever the other members do.

>>> import numpy as np, torch
>>> m = Mixup(mixup_alpha=0.2)
>>> lam, box = m.draw(np.random.default_rng(0))
>>> box is None and 0.0 <= lam <= 1.0
True
>>> x = torch.tensor([[1.0], [3.0]])
>>> mixing = Mixing(Mixup(mixup_alpha=0.2), seeds=[0])
>>> mixed, mix = mixing(x)
>>> bool(torch.allclose(mixed[0] + mixed[1], x.sum()))     # a convex mix of each row and its reverse
True
"""

from __future__ import annotations

import numpy as np
import torch

from ._validate import Setting, check_number

MIXUP_STREAM = 3   # the word of SeedSequence(seed) that seeds a run's mixup generator


def stream_seed(seed: int, word: int) -> int:
    """The ``word``-th 63-bit seed of ``numpy.random.SeedSequence(seed)``, as
    :meth:`reglab.presets.Streams.from_seed` derives words 0-2 (so those stay what they were).

    >>> from reglab.presets import Streams
    >>> stream_seed(5, 2) == Streams.from_seed(5).noise
    True
    """
    return int(np.random.SeedSequence(int(seed)).generate_state(word + 1, dtype=np.uint64)[word]) >> 1


class Mixup(Setting):
    """timm's ``Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode="batch", correct_lam)``.

    ``mixup_alpha`` / ``cutmix_alpha``: the Beta(alpha, alpha) of each kind, active when > 0 (at
    least one must be); ``prob``: the probability that a batch is mixed at all; ``switch_prob``: the
    probability of CutMix rather than Mixup when both are active; ``correct_lam``: set ``lam`` to the
    box's actual share once the box is clipped to the image. Defaults are timm's. The maths is in
    the module's docstring; ``Mixup(mixup_alpha=0.2)`` is the usual tabular/image setting,
    ``Mixup(mixup_alpha=0.0, cutmix_alpha=1.0)`` CutMix alone (images: inputs (N, C, H, W) or (N, H, W)).
    """

    defaults = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5, "correct_lam": True}
    example = " (e.g. reglab.Mixup(mixup_alpha=0.2))"

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, correct_lam: bool = True):
        self.mixup_alpha = check_number(mixup_alpha, "mixup_alpha", "Mixup", low=0)
        self.cutmix_alpha = check_number(cutmix_alpha, "cutmix_alpha", "Mixup", low=0)
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (or both). Got 0 for both.")
        self.prob = check_number(prob, "prob", "Mixup", low=0, high=1)
        self.switch_prob = check_number(switch_prob, "switch_prob", "Mixup", low=0, high=1)
        if not isinstance(correct_lam, bool):
            raise TypeError(f"The 'correct_lam' parameter of Mixup must be a bool. Got {correct_lam!r} instead.")
        self.correct_lam = correct_lam

    @property
    def cutmix(self) -> bool:
        """Whether some batches may be CutMix batches (which need image-shaped inputs)."""
        return self.cutmix_alpha > 0

    def draw(self, generator: np.random.Generator, image_shape: tuple | None = None):
        """One batch's ``(lam, box)``: timm's ``_params_per_batch`` then, for CutMix,
        ``cutmix_bbox_and_lam``; ``box`` is ``(yl, yh, xl, xh)`` or None (Mixup, or no mixing)."""
        lam, use_cutmix = 1.0, False
        if generator.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(generator.random() < self.switch_prob)
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            elif self.mixup_alpha > 0:
                alpha = self.mixup_alpha
            else:
                use_cutmix, alpha = True, self.cutmix_alpha
            lam = float(generator.beta(alpha, alpha))
        if lam == 1.0 or not use_cutmix:   # timm returns before drawing a box when lam is 1
            return lam, None
        height, width = image_shape
        box = bounding_box(generator, height, width, lam)
        if self.correct_lam:
            lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(height * width)
        return lam, box



def bounding_box(generator: np.random.Generator, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox`` (margin 0): a box of about ``(1 - lam)`` of the image, centred on a
    uniform pixel and clipped to the image; ``(yl, yh, xl, xh)``, rows ``yl:yh``, columns ``xl:xh``."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(generator.integers(0, height))
    cx = int(generator.integers(0, width))
    yl, yh = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    xl, xh = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return yl, yh, xl, xh


def get(mixup, owner: str = "fit") -> Mixup | None:
    """A :class:`Mixup` from a Mixup, a dict of its arguments (as in study files) or None."""
    return Mixup.coerce(mixup, owner)


class Mixing:
    """One run's mixing (``reglab.fit``: one seed) or a population's (one seed per member).

    ``mixing(x)`` mixes a training batch — ``(B, ...)``, or ``(P, B, ...)`` with ``stacked`` — and
    returns it with a :class:`Mix` that computes the batch's mixed losses and metric. With
    ``mixup=None`` it is the identity and its Mix the plain loss. The first batch is checked:
    floats (not token ids), image-shaped when CutMix may be drawn.
    """

    def __init__(self, mixup: Mixup | None, seeds, stacked: bool = False, owner: str = "fit"):
        self.mixup, self.stacked, self.owner = mixup, stacked, owner
        self.generators = [np.random.default_rng(stream_seed(s, MIXUP_STREAM)) for s in seeds] if mixup else []
        self.checked = False

    def _check(self, x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise ValueError(f"The 'mixup' parameter of {self.owner} mixes inputs, but the model takes integer inputs "
                             "(token ids), which cannot be mixed.")
        sample = tuple(x.shape[2 if self.stacked else 1:])
        if self.mixup.cutmix and len(sample) < 2:
            raise ValueError(f"The 'mixup' parameter of {self.owner} has cutmix_alpha > 0, which cuts boxes out of "
                             f"images, but each input has shape {sample}; give images (C, H, W) or (H, W), "
                             "or use mixup_alpha alone.")
        self.checked = True

    @property
    def on(self) -> bool:
        return self.mixup is not None

    def __call__(self, x: torch.Tensor):
        if self.mixup is None:
            return x, Mix(None, self.stacked)
        if not self.checked:
            self._check(x)
        xs = x if self.stacked else x.unsqueeze(0)
        members = xs.shape[0]
        draws = [self.mixup.draw(g, tuple(xs.shape[-2:])) for g in self.generators]
        lam = torch.tensor([d[0] for d in draws], dtype=x.dtype, device=x.device)
        member = (members,) + (1,) * (xs.dim() - 1)
        flipped = xs.flip(1)
        blend = torch.tensor([d[0] != 1.0 and d[1] is None for d in draws], device=x.device)
        out = xs
        if bool(blend.any()):
            weight = lam.view(member)
            out = torch.where(blend.view(member), weight * xs + (1 - weight) * flipped, xs)
        if any(d[1] is not None for d in draws):
            height, width = xs.shape[-2:]
            mask = torch.zeros(members, height, width, dtype=torch.bool, device=x.device)
            for i, (_, box) in enumerate(draws):
                if box is not None:
                    mask[i, box[0]:box[1], box[2]:box[3]] = True
            mask = mask.view((members,) + (1,) * (xs.dim() - 3) + (height, width))
            out = torch.where(mask, flipped, out)
        return (out if self.stacked else out[0]), Mix(lam, self.stacked)


class Mix:
    """The losses and metric of one mixed batch; ``lam``: one value per member (None: not mixed)."""

    def __init__(self, lam: torch.Tensor | None, stacked: bool):
        self.lam, self.stacked = lam, stacked

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        lam = self.lam.to(like.dtype)
        if not self.stacked:
            return lam[0]
        return lam.view((-1,) + (1,) * (like.dim() - 1))

    def _flip(self, value):
        return None if value is None else value.flip(1 if self.stacked else 0)

    def sample_loss(self, objective, out: torch.Tensor, y: torch.Tensor, sample_weight=None) -> torch.Tensor:
        """Per-sample losses of the mixed batch, shape ``out.shape[:-1]`` (see the module docstring)."""
        if self.lam is None:
            return objective.sample_loss(out, y, sample_weight, stacked=self.stacked)
        if objective.task.name == "regression":
            lam = self._weight(y)
            return objective.sample_loss(out, lam * y + (1 - lam) * self._flip(y), sample_weight, stacked=self.stacked)
        first = objective.sample_loss(out, y, sample_weight, stacked=self.stacked)
        second = objective.sample_loss(out, self._flip(y), self._flip(sample_weight), stacked=self.stacked)
        lam = self._weight(first)
        return lam * first + (1 - lam) * second

    def sample_metric(self, task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample metric of the mixed batch, weighed as the loss is."""
        with torch.no_grad():
            if self.lam is None:
                return task.sample_metric(out, y)
            if task.name == "regression":
                lam = self._weight(y)
                return task.sample_metric(out, lam * y + (1 - lam) * self._flip(y))
            first, second = task.sample_metric(out, y), task.sample_metric(out, self._flip(y))
            lam = self._weight(first)
            return lam * first + (1 - lam) * second
