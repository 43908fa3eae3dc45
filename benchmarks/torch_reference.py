"""PyTorch versions of cxrjax's networks, and their timed train and eval steps.

What a user would otherwise write: the same layer structure as the Flax modules in
``cxrjax/models`` (same convolutions, paddings, BatchNorm placement, poolings, heads, so
the same parameter count; a test checks it), built with the same names and options as
:func:`cxrjax.models.create` so one overrides dict describes both. The train step is
forward, cross-entropy, backward, Adam step; eval is a ``no_grad`` forward.

Setups: on CUDA channels_last, autocast bf16 when the configuration's dtype is bfloat16,
TF32 allowed for float32 (what JAX's default precision does), cuDNN autotuning, fused
Adam; with ``compile="auto"`` both eager and ``torch.compile`` are timed, on CUDA and on
CPU, and the faster one is reported (PyTorch's best setup). If ``torch.compile`` fails
the reason is recorded and eager is used.

Requires the optional extra ``torch`` (``pip install -e .[torch]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import Retimer, StepTimes, time_steps

# --------------------------------------------------------------------------------------
# Architectures (mirror cxrjax/models/{lenet,s0,s4,vgg}.py)
# --------------------------------------------------------------------------------------


def _flat_features(features: nn.Module, channels: int, image_size: int) -> int:
    """Number of features after `features` for one image (a dry run on zeros)."""
    with torch.no_grad():
        return int(features(torch.zeros(1, channels, image_size, image_size)).numel())


class _Twin(nn.Module):
    """What every twin computes, as the Flax models do: its ``features`` (the conv
    stages), then its ``head`` (flatten or pool, dense layers, logits); each twin builds
    both in ``__init__``."""

    features: nn.Sequential
    head: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LeNet5(_Twin):
    """cxrjax.models.lenet.LeNet5: conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, K."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 1,
        image_size: int = 32,
        conv_features: tuple[int, int] = (6, 16),
        dense_features: tuple[int, int] = (120, 84),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for f in conv_features:
            layers += [nn.Conv2d(cin, f, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = f
        self.features = nn.Sequential(*layers)
        n = _flat_features(self.features, channels, image_size)
        head: list[nn.Module] = [nn.Flatten()]
        for f in dense_features:
            head += [nn.Linear(n, f), nn.ReLU(inplace=True)]
            n = f
        head.append(nn.Linear(n, num_classes))
        self.head = nn.Sequential(*head)


class SimpleCNN(_Twin):
    """cxrjax.models.s0.SimpleCNN: 3x[conv3x3 valid, ReLU, maxpool, (dropout)], dense, dropout, K."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 150,
        filters: tuple[int, ...] = (32, 64, 128),
        dense: int = 128,
        block_dropout: float = 0.0,
        head_dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for f in filters:
            layers += [nn.Conv2d(cin, f, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            if block_dropout:
                layers.append(nn.Dropout(block_dropout))
            cin = f
        self.features = nn.Sequential(*layers)
        n = _flat_features(self.features, channels, image_size)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(n, dense), nn.ReLU(inplace=True)]
        if head_dropout:
            head.append(nn.Dropout(head_dropout))
        head.append(nn.Linear(dense, num_classes))
        self.head = nn.Sequential(*head)


S4_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...]]] = {
    "exp1": ((128, 64, 32, 32), (8, 4, 3, 3), (2, 2, 2, 2), (True, True, True, True)),
    "exp2": ((16, 32, 64, 128), (10, 6, 3, 3), (0, 2, 2, 2), (False, True, True, True)),
}


class S4CNN(_Twin):
    """cxrjax.models.s4.S4CNN: 4x[conv, (BN), ReLU, (pool), (dropout)], flatten, MLP head."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        image_size: int = 128,
        layout: str = "exp2",
        batchnorm: str = "none",
        dropout: float = 0.0,
        head_width: int = 128,
        features: tuple[int, ...] | None = None,
    ):
        super().__init__()
        widths, kernels, paddings, pooled = S4_LAYOUTS[layout]
        widths = tuple(features) if features is not None else widths
        layers: list[nn.Module] = []
        cin = channels
        for i, (f, k, p, pool) in enumerate(zip(widths, kernels, paddings, pooled), start=1):
            layers.append(nn.Conv2d(cin, f, k, padding=p))
            if batchnorm == "all" or (batchnorm == "first" and i == 1):
                layers.append(nn.BatchNorm2d(f, eps=1e-5, momentum=0.1))
            layers.append(nn.ReLU(inplace=True))
            if pool:
                layers.append(nn.MaxPool2d(2))
            if dropout:
                layers.append(nn.Dropout(dropout))
            cin = f
        self.features = nn.Sequential(*layers)
        n = _flat_features(self.features.eval(), channels, image_size)
        self.features.train()
        head: list[nn.Module] = [nn.Flatten()]
        if head_width:
            head += [nn.Linear(n, head_width), nn.ReLU(inplace=True)]
            if dropout:
                head.append(nn.Dropout(dropout))
            n = head_width
        head.append(nn.Linear(n, num_classes))
        self.head = nn.Sequential(*head)


VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(_Twin):
    """cxrjax.models.vgg.VGG: torchvision's vgg16 / vgg16_bn with 1-channel input and K classes."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 1,
        image_size: int = 224,
        blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS,
        batchnorm: bool = False,
        head: str = "classifier",
        classifier_width: int = 4096,
        pool_size: int = 7,
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for block in blocks:
            for f in block:
                layers.append(nn.Conv2d(cin, f, 3, padding=1))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(f, eps=1e-5, momentum=0.1))
                layers.append(nn.ReLU(inplace=True))
                cin = f
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        if head == "gap":
            tail: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            if dropout:
                tail.append(nn.Dropout(dropout))
            tail.append(nn.Linear(cin, num_classes))
        elif head == "classifier":
            tail = [nn.AdaptiveAvgPool2d(pool_size), nn.Flatten()]
            n = cin * pool_size * pool_size
            for _ in range(2):
                tail += [nn.Linear(n, classifier_width), nn.ReLU(inplace=True)]
                if dropout:
                    tail.append(nn.Dropout(dropout))
                n = classifier_width
            tail.append(nn.Linear(n, num_classes))
        else:
            raise ValueError(f"VGG: unknown head {head!r}; choose 'classifier' or 'gap'")
        self.head = nn.Sequential(*tail)


@dataclass(frozen=True)
class TorchSpec:
    """How to build one named PyTorch model: class, preset options, default input."""

    cls: type[nn.Module]
    options: dict[str, Any]
    image_size: int
    channels: int


_S4 = dict(layout="exp2", dropout=0.0)
# Same names and presets as cxrjax/models/registry.py (a test compares parameter counts).
TORCH_MODELS: dict[str, TorchSpec] = {
    "lenet5": TorchSpec(LeNet5, {}, 32, 1),
    "s0_a": TorchSpec(SimpleCNN, dict(filters=(32, 64, 128), dense=128, block_dropout=0.0, head_dropout=0.5), 150, 3),
    "s0_b": TorchSpec(SimpleCNN, dict(filters=(32, 64, 128), dense=64, block_dropout=0.2, head_dropout=0.3), 150, 3),
    "s0_c": TorchSpec(SimpleCNN, dict(filters=(32, 64, 128), dense=128, block_dropout=0.0, head_dropout=0.5), 150, 3),
    "s4_exp1": TorchSpec(S4CNN, dict(layout="exp1", batchnorm="none", dropout=0.0), 128, 3),
    "s4_exp2": TorchSpec(S4CNN, dict(_S4, batchnorm="none"), 128, 3),
    "s4_exp3": TorchSpec(S4CNN, dict(_S4, batchnorm="first"), 128, 3),
    "s4_exp4": TorchSpec(S4CNN, dict(_S4, batchnorm="all"), 128, 3),
    "s4_exp5": TorchSpec(S4CNN, dict(_S4, batchnorm="all"), 128, 3),
    "s4_exp6": TorchSpec(S4CNN, dict(layout="exp2", batchnorm="none", dropout=0.25), 128, 3),
    "s4_exp7": TorchSpec(S4CNN, dict(layout="exp2", batchnorm="none", dropout=0.25), 128, 3),
    "s4_exp8": TorchSpec(S4CNN, dict(layout="exp2", batchnorm="all", dropout=0.25), 128, 3),
    "s4_exp9": TorchSpec(S4CNN, dict(layout="exp2", batchnorm="all", dropout=0.25), 128, 3),
    "vgg16": TorchSpec(VGG, dict(batchnorm=False, head="classifier"), 224, 1),
    "vgg16_bn": TorchSpec(VGG, dict(batchnorm=True, head="classifier"), 224, 1),
}

# Options of the Flax modules that do not change the PyTorch structure (initialisation,
# compute dtype, BatchNorm axis) and are therefore accepted and ignored here.
_IGNORED_OPTIONS = {"init", "dtype", "axis_name", "formulation"}


def create(
    name: str, *, num_classes: int, channels: int | None = None, image_size: int | None = None, **overrides: Any
) -> nn.Module:
    """Build the PyTorch twin of ``cxrjax.models.create(name, ...)`` for `image_size` inputs."""
    if name not in TORCH_MODELS:
        raise KeyError(
            f"no PyTorch reference for model {name!r}; known: {sorted(TORCH_MODELS)} "
            "(add it to TORCH_MODELS in benchmarks/torch_reference.py)"
        )
    spec = TORCH_MODELS[name]
    options = {**spec.options, **{k: v for k, v in overrides.items() if k not in _IGNORED_OPTIONS}}
    return spec.cls(
        num_classes=num_classes,
        channels=spec.channels if channels is None else channels,
        image_size=spec.image_size if image_size is None else image_size,
        **options,
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm scale and shift included, running stats not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------
# Timed steps
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchConfig:
    """One PyTorch configuration: what to build and how to run it.

    ``compile`` "auto" = time eager and compiled and keep the faster; "never"/"always"
    force one.
    """

    model: str
    image_size: int
    batch: int
    dtype: str = "float32"
    num_classes: int = 4
    channels: int | None = None
    compile: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TorchResult:
    """Timings of the chosen setup plus what was tried and why."""

    setup: str  # e.g. "cpu eager", "cuda compiled channels_last autocast-bf16"
    train: StepTimes
    eval: StepTimes
    compile_s: float | None  # first compiled call (compilation), None when eager
    parameters: int
    peak_memory_bytes: int | None
    alternatives: dict[str, float] = field(default_factory=dict)  # setup -> train median s
    notes: list[str] = field(default_factory=list)
    retime: Retimer | None = field(default=None, repr=False)  # more train steps of `setup` (keep=True)


def _sync(device: torch.device) -> Callable[[Any], None]:
    if device.type == "cuda":
        return lambda _: torch.cuda.synchronize(device)
    return lambda _: None


def _adam(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Fused Adam where this torch supports it (CUDA, and CPU since torch 2.4)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=1e-3)


def _steps(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None
):
    device_type = x.device.type

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        if autocast is None:
            return model(inputs)
        with torch.autocast(device_type, dtype=autocast):
            return model(inputs)

    def train_step(_: Any) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    def eval_step(_: Any) -> torch.Tensor:
        with torch.no_grad():
            return forward(x)

    return train_step, eval_step


def _run_setup(
    cfg: TorchConfig,
    images: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    compiled: bool,
    *,
    warmup: int,
    steps: int,
    keep: bool = False,
) -> tuple[StepTimes, StepTimes, float | None, int, int | None, Retimer | None]:
    """Build a fresh model for one setup and time its train and eval steps; with `keep`,
    also a :class:`Retimer` that holds the model for more train steps."""
    torch.manual_seed(0)
    model = create(
        cfg.model, num_classes=cfg.num_classes, channels=cfg.channels, image_size=cfg.image_size, **cfg.overrides
    )
    n_params = count_parameters(model)
    channels_last = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    x = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), dtype=np.float32, order="C")).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    opt = _adam(model, device)
    autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    runner = torch.compile(model) if compiled else model
    train_step, eval_step = _steps(runner, opt, x, y, autocast)
    sync = _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compile_s = None
    if compiled:
        t0 = time.perf_counter()
        train_step(None)
        sync(None)
        compile_s = time.perf_counter() - t0
    train_times, _ = time_steps(train_step, None, warmup=warmup, steps=steps, sync=sync)
    model.eval()
    if compiled:
        eval_step(None)  # compiles the eval graph outside the timed steps
    eval_times, _ = time_steps(eval_step, None, warmup=max(1, warmup), steps=steps, sync=sync)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    retime = Retimer(train_step, None, sync, rounds=[train_times], before=model.train) if keep else None
    del model, runner, opt, x, y, train_step, eval_step
    if device.type == "cuda" and not keep:
        torch.cuda.empty_cache()  # give the memory back for the next JAX configuration
    return train_times, eval_times, compile_s, n_params, peak, retime


def benchmark(
    cfg: TorchConfig,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    warmup: int,
    steps: int,
    device: str | None = None,
    keep: bool = False,
) -> TorchResult:
    """Time the PyTorch train and eval steps on `images` (NHWC float32) and `labels`.

    See the module docstring for which setups are tried. Compilation failures are caught
    and recorded in ``notes`` (the result then reports eager). With `keep`, the result's
    ``retime`` times more train steps of the chosen setup (its model stays alive).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default precision uses TF32 too
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.compile not in ("auto", "always", "never"):
        raise ValueError(f"compile must be 'auto', 'always' or 'never', got {cfg.compile!r}")
    tries = {"never": [False], "always": [True], "auto": [False, True]}[cfg.compile]
    prefix = f"{dev.type}{' channels_last' if dev.type == 'cuda' else ''}"
    suffix = " autocast-bf16" if cfg.dtype == "bfloat16" else ""
    results: dict[str, tuple] = {}
    notes: list[str] = []
    for compiled in tries:
        name = f"{prefix} {'compiled' if compiled else 'eager'}{suffix}"
        try:
            results[name] = _run_setup(cfg, images, labels, dev, compiled, warmup=warmup, steps=steps, keep=keep)
        except Exception as e:  # torch.compile needs a C++ toolchain / triton; fall back
            if not compiled:
                raise
            notes.append(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); using eager")
            if not results:
                name = f"{prefix} eager{suffix}"
                results[name] = _run_setup(cfg, images, labels, dev, False, warmup=warmup, steps=steps, keep=keep)
    best = min(results, key=lambda k: results[k][0].median_s)  # noqa: F821 - before the del below
    train_t, eval_t, compile_s, n_params, peak, retime = results[best]
    alternatives = {k: v[0].median_s for k, v in results.items()}
    del results  # frees the other setups' models (only `retime` holds the chosen one)
    if dev.type == "cuda" and keep:
        torch.cuda.empty_cache()
    return TorchResult(
        setup=best,
        train=train_t,
        eval=eval_t,
        compile_s=compile_s,
        parameters=n_params,
        peak_memory_bytes=peak,
        alternatives=alternatives,
        notes=notes,
        retime=retime,
    )
