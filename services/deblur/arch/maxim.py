"""MAXIM-3S (Tu et al., CVPR 2022) in PyTorch, as exported by jax2tf from google-research/maxim.

Tensors flow in NHWC (batch, height, width, channels): the network is mostly per-pixel dense layers, layer
norms and token-mixing matmuls over the channel-last layout; convolutions see the same memory as
channels_last NCHW through a free ``permute``; 1x1 convolutions and the 2x2 stride-2 transposed convolutions
are dense layers over the channels. Module and attribute names mirror the Flax parameter tree
(``stage_0_encoder_block_0.SplitHeadMultiAxisGmlpLayer_0.in_project`` ...), so the weights in the TF.js
export map onto this state dict by name (see ``services/deblur/maxim_weights.py``).

Semantics taken from the exported graph, not only from the Flax source: layer norm eps 1e-6, GELU with the
tanh approximation, bilinear resizes with antialiasing when downscaling (jax.image.resize), nearest
downscaling of the input picks pixel floor((i + 0.5) * factor), conv "SAME" padding, and the 2x2 stride-2
transposed convolution of TF's Conv2DBackpropInput (no kernel flip, no padding).
Input H and W must be multiples of 64; only the final full-resolution output is computed.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 32
DEPTH = 3
NUM_STAGES = 3
NUM_GROUPS = 2
NUM_BOTTLENECK_BLOCKS = 2
HIGH_RES_STAGES = 2
BLOCK_HR, GRID_HR, BLOCK_LR = 16, 16, 8
LN_EPS = 1e-6
SIZE_MULTIPLE = 64


# The abort check of the run in progress on this thread (the model is shared between request threads).
_run_state = threading.local()


def poll_abort() -> None:
    """Called at the start of every mixing layer: a long window stops within a fraction of a second."""
    check = getattr(_run_state, "check", None)
    if check is not None:
        check()


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _fused_linear_gelu_works() -> bool:
    """Whether this torch build has oneDNN's linear with a GELU post-op (PyTorch's own fusion kernel, the
    one its compiler emits for CPU); checked once against the unfused ops."""
    try:
        x, weight, bias = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6)
        fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh")
        return bool(torch.allclose(fused, gelu(F.linear(x, weight, bias)), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


FUSED_LINEAR_GELU = torch.backends.mkldnn.is_available() and _fused_linear_gelu_works()


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu(linear(x))`` in one pass over the output on CPU (oneDNN post-op): a separate GELU re-reads and
    rewrites every activation it makes, and this network calls it on its widest tensors (bench/deblur.py
    prints the network's speed). On CUDA and other dtypes, the two ops."""
    if FUSED_LINEAR_GELU and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "tanh")
    return gelu(F.linear(x, weight, bias))


def dense_gelu(x: torch.Tensor, dense: nn.Linear, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """``gelu`` of output channels [start, stop) of ``dense`` (all by default)."""
    stop = dense.out_features if stop is None else stop
    return linear_gelu(x, dense.weight[start:stop], dense.bias[start:stop])


class LayerNorm(nn.LayerNorm):
    def __init__(self, channels: int):
        super().__init__(channels, eps=LN_EPS)


class Conv(nn.Conv2d):
    """A convolution on an NHWC tensor (run as channels_last NCHW); Flax "SAME" padding."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1):
        # SAME with an even input size: stride 1 pads (k - 1) / 2 per side; the 4x4 stride-2 pads 1 per side
        super().__init__(cin, cout, kernel, stride=stride, padding=(kernel - stride) // 2 if stride > 1 else kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvTransposeUp(nn.Module):
    """2x2 kernel, stride 2: each input pixel writes its own 2x2 output block, so it is a dense layer to
    4 x cout values per pixel (weight rows ordered (dy, dx, cout)) followed by one reshuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cout = cout
        self.weight = nn.Parameter(torch.empty(4 * cout, cin))
        self.bias = nn.Parameter(torch.empty(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        y = F.linear(x, self.weight, self.bias.repeat(4))
        return y.reshape(n, h, w, 2, 2, self.cout).permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.cout)


def to_tokens(x: torch.Tensor, fh: int, fw: int, grid: bool) -> torch.Tensor:
    """Image n (gh fh) (gw fw) c -> token-major T x M x c for mixing over T tokens: T = (gh gw) for grid
    mixing, T = (fh fw) for mixing inside blocks (Flax's block_images + swapaxes). With the mixed axis
    first, token mixing is one plain GEMM; per-pixel layers (layer norms, dense) do not care about order."""
    n, h, w, c = x.shape
    gh, gw = h // fh, w // fw
    x = x.reshape(n, gh, fh, gw, fw, c)
    x = x.permute(1, 3, 0, 2, 4, 5) if grid else x.permute(2, 4, 0, 1, 3, 5)
    return x.reshape(gh * gw if grid else fh * fw, -1, c)


def from_tokens(t: torch.Tensor, n: int, h: int, w: int, fh: int, fw: int, grid: bool) -> torch.Tensor:
    """Inverse of ``to_tokens``."""
    gh, gw, c = h // fh, w // fw, t.shape[-1]
    if grid:
        x = t.reshape(gh, gw, n, fh, fw, c).permute(2, 0, 3, 1, 4, 5)
    else:
        x = t.reshape(fh, fw, n, gh, gw, c).permute(2, 3, 0, 4, 1, 5)
    return x.reshape(n, h, w, c)


def add_from_tokens(x: torch.Tensor, t: torch.Tensor, fh: int, fw: int, grid: bool) -> torch.Tensor:
    """``x + from_tokens(t)`` written once, in ``x``'s layout (no un-permuted copy of ``t`` first)."""
    n, h, w, c = x.shape
    gh, gw = h // fh, w // fw
    if grid:
        view = t.reshape(gh, gw, n, fh, fw, c).permute(2, 0, 3, 1, 4, 5)
    else:
        view = t.reshape(fh, fw, n, gh, gw, c).permute(2, 3, 0, 4, 1, 5)
    out = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device)
    torch.add(x.reshape(n, gh, fh, gw, fw, c), view, out=out.view(n, gh, fh, gw, fw, c))
    return out


def mix_tokens(t: torch.Tensor, dense: nn.Linear, offset: float = 0.0) -> torch.Tensor:
    """Dense over the token axis of a token-major T x M x c tensor, plus ``offset``: one GEMM."""
    tokens = t.shape[0]
    weight = dense.weight.to(t.dtype)
    bias = (dense.bias + offset).to(t.dtype)[:, None]
    return torch.addmm(bias, weight, t.reshape(tokens, -1)).reshape(t.shape)


def linear_of_concat(parts: list[torch.Tensor], dense: nn.Linear) -> torch.Tensor:
    """``dense(cat(parts, -1))`` without materialising the concatenation."""
    out, start = None, 0
    for part in parts:
        stop = start + part.shape[-1]
        weight = dense.weight[:, start:stop]
        if out is None:
            out = F.linear(part, weight, dense.bias)
        else:
            flat = out.view(-1, out.shape[-1])  # in place: autocast does not cast, so match dtypes here
            flat.addmm_(part.reshape(-1, part.shape[-1]).to(out.dtype), weight.t().to(out.dtype))
        start = stop
    assert out is not None
    return out


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention."""

    def __init__(self, features: int, reduction: int = 4):
        super().__init__()
        self.Conv_0 = nn.Linear(features, features // reduction)
        self.Conv_1 = nn.Linear(features // reduction, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(1, 2), keepdim=True)
        y = torch.sigmoid(self.Conv_1(F.relu(self.Conv_0(y))))
        return x * y


class RCAB(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.LayerNorm = LayerNorm(features)
        self.conv1 = Conv(features, features, 3)
        self.conv2 = Conv(features, features, 3)
        self.channel_attention = CALayer(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.LayerNorm(x))
        y = self.conv2(F.leaky_relu(y, 0.2))
        return self.channel_attention(y) + x


class GatingUnit(nn.Module):
    """gMLP spatial gating, u * (Dense_tokens(LN(v)) + 1): ``grid`` mixes across blocks, else within. Applied
    inside ``GmlpLayer.forward``, which frees each intermediate as soon as it is used."""

    def __init__(self, channels: int, tokens: int, grid: bool):
        super().__init__()
        self.grid = grid
        self.intermediate_layernorm = LayerNorm(channels // 2)
        self.Dense_0 = nn.Linear(tokens, tokens)


class GmlpLayer(nn.Module):
    """GridGmlpLayer (``grid`` = fixed gh x gw grid, global mixing) or BlockGmlpLayer (fixed fh x fw blocks)."""

    def __init__(self, channels: int, size: int, grid: bool, factor: int = 2):
        super().__init__()
        self.size, self.grid = size, grid
        self.LayerNorm = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * factor)
        unit = GatingUnit(channels * factor, size * size, grid)
        if grid:
            self.GridGatingUnit = unit
        else:
            self.BlockGatingUnit = unit
        self.out_project = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        fh, fw = (h // self.size, w // self.size) if self.grid else (self.size, self.size)
        unit = self.GridGatingUnit if self.grid else self.BlockGatingUnit
        # Each intermediate is dropped as soon as it is used: the peak memory of a window limits its size.
        y = self.LayerNorm(to_tokens(x, fh, fw, self.grid))
        half = self.in_project.out_features // 2
        u = dense_gelu(y, self.in_project, 0, half)
        v = dense_gelu(y, self.in_project, half, 2 * half)
        del y
        v = unit.intermediate_layernorm(v)
        gate = mix_tokens(v, unit.Dense_0, offset=1.0)
        del v
        gate.mul_(u)
        del u
        out = self.out_project(gate)
        del gate
        return add_from_tokens(x, out, fh, fw, self.grid)


class MultiAxisGmlpLayer(nn.Module):
    """ResidualSplitHeadMultiAxisGmlpLayer: half the channels mixed over a grid, half inside blocks."""

    def __init__(self, channels: int, block: int, grid: int):
        super().__init__()
        self.LayerNorm_in = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * 2)
        self.GridGmlpLayer = GmlpLayer(channels, grid, grid=True)
        self.BlockGmlpLayer = GmlpLayer(channels, block, grid=False)
        self.out_project = nn.Linear(channels * 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        poll_abort()
        y = self.LayerNorm_in(x)
        half = self.in_project.out_features // 2
        u = self.GridGmlpLayer(dense_gelu(y, self.in_project, 0, half))
        v = self.BlockGmlpLayer(dense_gelu(y, self.in_project, half, 2 * half))
        return linear_of_concat([u, v], self.out_project) + x


class MlpBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.Dense_0 = nn.Linear(features, features)
        self.Dense_1 = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Dense_1(dense_gelu(x, self.Dense_0))


class RDCAB(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.LayerNorm = LayerNorm(features)
        self.channel_mixing = MlpBlock(features)
        self.channel_attention = CALayer(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.channel_attention(self.channel_mixing(self.LayerNorm(x)))


class BottleneckBlock(nn.Module):
    def __init__(self, features: int, size: int):
        super().__init__()
        self.input_proj = nn.Linear(features, features)
        for i in range(NUM_GROUPS):
            setattr(self, f"SplitHeadMultiAxisGmlpLayer_{i}", MultiAxisGmlpLayer(features, size, size))
            setattr(self, f"channel_attention_block_1_{i}", RDCAB(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        shortcut = x
        for i in range(NUM_GROUPS):
            x = getattr(self, f"SplitHeadMultiAxisGmlpLayer_{i}")(x)
            x = getattr(self, f"channel_attention_block_1_{i}")(x)
        return x + shortcut


class SpatialGatingWeights(nn.Module):
    """GetSpatialGatingWeights: the gating signal of a cross-gating block."""

    def __init__(self, channels: int, block: int, grid: int):
        super().__init__()
        self.block, self.grid = block, grid
        self.LayerNorm_in = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * 2)
        self.Dense_0 = nn.Linear(grid * grid, grid * grid)
        self.Dense_1 = nn.Linear(block * block, block * block)
        self.out_project = nn.Linear(channels * 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        poll_abort()
        n, h, w, _ = x.shape
        y = self.LayerNorm_in(x)
        half = self.in_project.out_features // 2
        u = dense_gelu(y, self.in_project, 0, half)
        v = dense_gelu(y, self.in_project, half, 2 * half)
        del y
        fh, fw = h // self.grid, w // self.grid
        u = from_tokens(mix_tokens(to_tokens(u, fh, fw, True), self.Dense_0), n, h, w, fh, fw, True)
        fh = fw = self.block
        v = from_tokens(mix_tokens(to_tokens(v, fh, fw, False), self.Dense_1), n, h, w, fh, fw, False)
        return linear_of_concat([u, v], self.out_project)


class CrossGatingBlock(nn.Module):
    def __init__(self, x_channels: int, y_channels: int, features: int, block: int, grid: int, upsample_y: bool):
        super().__init__()
        if upsample_y:
            self.ConvTranspose_0 = ConvTransposeUp(y_channels, features)
            y_channels = features
        self.upsample_y = upsample_y
        self.Conv_0 = nn.Linear(x_channels, features)
        self.Conv_1 = nn.Linear(y_channels, features)
        self.LayerNorm_x = LayerNorm(features)
        self.in_project_x = nn.Linear(features, features)
        self.SplitHeadMultiAxisGating_x = SpatialGatingWeights(features, block, grid)
        self.LayerNorm_y = LayerNorm(features)
        self.in_project_y = nn.Linear(features, features)
        self.SplitHeadMultiAxisGating_y = SpatialGatingWeights(features, block, grid)
        self.out_project_y = nn.Linear(features, features)
        self.out_project_x = nn.Linear(features, features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.upsample_y:
            y = self.ConvTranspose_0(y)
        if isinstance(x, list):  # the pieces of a concatenation, handed over: freed once projected
            pieces, x = x, linear_of_concat(x, self.Conv_0)
            pieces.clear()
        else:
            x = self.Conv_0(x)
        y = self.Conv_1(y)
        shortcut_x, shortcut_y = x, y
        x = dense_gelu(self.LayerNorm_x(x), self.in_project_x)
        gx = self.SplitHeadMultiAxisGating_x(x)
        y = dense_gelu(self.LayerNorm_y(y), self.in_project_y)
        gy = self.SplitHeadMultiAxisGating_y(y)
        y = self.out_project_y(y * gx) + shortcut_y
        x = self.out_project_x(x * gy) + y + shortcut_x
        return x, y


class UNetEncoderBlock(nn.Module):
    def __init__(self, cin: int, features: int, block: int, grid: int, downsample: bool, cross_gating: bool):
        super().__init__()
        self.Conv_0 = nn.Linear(cin, features)
        for i in range(NUM_GROUPS):
            setattr(self, f"SplitHeadMultiAxisGmlpLayer_{i}", MultiAxisGmlpLayer(features, block, grid))
            setattr(self, f"channel_attention_block_1{i}", RCAB(features))
        if cross_gating:
            self.cross_gating_block = CrossGatingBlock(features, features, features, block, grid, upsample_y=False)
        self.downsample = downsample
        if downsample:
            self.Conv_1 = Conv(features, features, 4, stride=2)

    def forward(self, inputs: list[torch.Tensor], cross: torch.Tensor | None = None):
        """``inputs``: the pieces of the block's input (joined on the channels), handed over: the list is
        emptied once they are projected, so they are not kept for the whole block. ``cross``: the previous
        stage's encoder + decoder features for the cross-gating block (stages after the first)."""
        x = linear_of_concat(inputs, self.Conv_0)
        inputs.clear()
        shortcut = x
        for i in range(NUM_GROUPS):
            x = getattr(self, f"SplitHeadMultiAxisGmlpLayer_{i}")(x)
            x = getattr(self, f"channel_attention_block_1{i}")(x)
        x = x + shortcut
        if cross is not None:
            x, _ = self.cross_gating_block(x, cross)
        if self.downsample:
            return self.Conv_1(x), x
        return x


class UNetDecoderBlock(nn.Module):
    def __init__(self, cin: int, skip_channels: int, features: int, block: int, grid: int):
        super().__init__()
        self.ConvTranspose_0 = ConvTransposeUp(cin, features)
        self.UNetEncoderBlock_0 = UNetEncoderBlock(features + skip_channels, features, block, grid,
                                                   downsample=False, cross_gating=False)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """``inputs``: [the level below's output, *the bridge's pieces], handed over (emptied)."""
        inputs[0] = self.ConvTranspose_0(inputs[0])
        return self.UNetEncoderBlock_0(inputs)


class UpSampleRatio(nn.Module):
    """Resize by 2**exponent (jax.image.resize bilinear: antialiased when shrinking), then a 1x1 conv."""

    def __init__(self, cin: int, features: int, exponent: int):
        super().__init__()
        self.exponent = exponent
        self.Conv_0 = nn.Linear(cin, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exponent == 0:
            return self.Conv_0(x)
        # Resizing (weights summing to one) and the 1x1 conv commute: resize the side with fewer channels.
        project_first = self.Conv_0.out_features < self.Conv_0.in_features
        if project_first:
            x = self.Conv_0(x)
        n, h, w, c = x.shape
        size = (int(h * 2.0 ** self.exponent), int(w * 2.0 ** self.exponent))
        dtype = x.dtype  # the antialiased kernel has no bfloat16 version
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False,
                          antialias=self.exponent < 0).permute(0, 2, 3, 1).to(dtype)
        return x if project_first else self.Conv_0(x)


class SAM(nn.Module):
    """Supervised attention module between stages (only its features are used by the next stage)."""

    def __init__(self, features: int):
        super().__init__()
        self.Conv_0 = Conv(features, features, 3)
        self.Conv_1 = Conv(features, 3, 3)
        self.Conv_2 = Conv(3, features, 3)

    def forward(self, x: torch.Tensor, x_image: torch.Tensor) -> torch.Tensor:
        image = self.Conv_1(x) + x_image
        return self.Conv_0(x) * torch.sigmoid(self.Conv_2(image)) + x


def _sizes(i: int) -> tuple[int, int]:
    """(block, grid) size at depth i: larger blocks at the high-resolution depths."""
    return (BLOCK_HR, GRID_HR) if i < HIGH_RES_STAGES else (BLOCK_LR, BLOCK_LR)


class MAXIM3S(nn.Module):
    """MAXIM-3S (features 32, depth 3, 3 stages, 3 supervision scales): NHWC [0, 1] in, the last stage's
    full-resolution image out (same shape)."""

    def __init__(self):
        super().__init__()
        f = FEATURES
        upsample_index = 0
        for s in range(NUM_STAGES):
            for i in range(DEPTH):
                block, grid = _sizes(i)
                setattr(self, f"stage_{s}_input_conv_{i}", Conv(3, f << i, 3))
                if s > 0:
                    setattr(self, f"stage_{s}_input_fuse_sam_{i}",
                            CrossGatingBlock(f << i, f << i, f << i, block, grid, upsample_y=False))
                setattr(self, f"stage_{s}_encoder_block_{i}",
                        UNetEncoderBlock(2 * (f << i) if i == 0 else (f << (i - 1)) + (f << i), f << i, block, grid,
                                         downsample=True, cross_gating=s > 0))
            for i in range(NUM_BOTTLENECK_BLOCKS):
                setattr(self, f"stage_{s}_global_block_{i}", BottleneckBlock(f << (DEPTH - 1), BLOCK_LR))
            # Flax names UpSampleRatio modules by creation order across the whole network.
            for i in reversed(range(DEPTH)):
                for j in range(DEPTH):
                    setattr(self, f"UpSampleRatio_{upsample_index}", UpSampleRatio(f << j, f << i, j - i))
                    upsample_index += 1
                block, grid = _sizes(i)
                y_channels = f << min(i + 1, DEPTH - 1)
                setattr(self, f"stage_{s}_cross_gating_block_{i}",
                        CrossGatingBlock(DEPTH * (f << i), y_channels, f << i, block, grid, upsample_y=True))
            for i in reversed(range(DEPTH)):
                for j in range(DEPTH):  # skip_features[j] has the channels of depth DEPTH - 1 - j
                    setattr(self, f"UpSampleRatio_{upsample_index}",
                            UpSampleRatio(f << (DEPTH - 1 - j), f << i, DEPTH - j - 1 - i))
                    upsample_index += 1
                block, grid = _sizes(i)
                setattr(self, f"stage_{s}_decoder_block_{i}",
                        UNetDecoderBlock(f << min(i + 1, DEPTH - 1), DEPTH * (f << i), f << i, block, grid))
                if s < NUM_STAGES - 1:
                    setattr(self, f"stage_{s}_supervised_attention_module_{i}", SAM(f << i))
        setattr(self, f"stage_{NUM_STAGES - 1}_output_conv_0", Conv(f, 3, 3))

    def forward(self, x: torch.Tensor, check: Callable[[], None] | None = None) -> torch.Tensor:
        """``check`` (optional) is called between blocks and layers; it may raise to stop the run."""
        _run_state.check = check
        try:
            return self._forward(x, check or (lambda: None))
        finally:
            _run_state.check = None

    def _resized(self, features: list[torch.Tensor], first: int) -> list[torch.Tensor]:
        """``features`` brought to one scale by ``UpSampleRatio_{first}``, ``_{first + 1}``, ... The network
        joins them on the channels; the next dense layer reads the pieces instead (``linear_of_concat``), so
        the joined copy is never made: peak memory bounds the window size."""
        return [getattr(self, f"UpSampleRatio_{first + j}")(feature) for j, feature in enumerate(features)]

    def _forward(self, x: torch.Tensor, check: Callable[[], None]) -> torch.Tensor:
        n, h, w, _ = x.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"MAXIM input sides must be multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        # jax.image.resize "nearest" shrinking by k picks input pixel floor((i + 0.5) * k)
        shortcuts = [x] + [x[:, (1 << i) // 2::1 << i, (1 << i) // 2::1 << i] for i in range(1, DEPTH)]
        sam_features: list[torch.Tensor] = []
        encs_prev: list[torch.Tensor] = []
        decs_prev: list[torch.Tensor] = []
        upsample_index = 0
        for s in range(NUM_STAGES):
            x_scales = []
            for i in range(DEPTH):
                x_scale = getattr(self, f"stage_{s}_input_conv_{i}")(shortcuts[i])
                if s > 0:
                    x_scale, _ = getattr(self, f"stage_{s}_input_fuse_sam_{i}")(x_scale, sam_features.pop())
                x_scales.append(x_scale)
            encs = []
            y = x_scales[0]
            for i in range(DEPTH):
                enc_prev = encs_prev.pop() if s > 0 else None
                dec_prev = decs_prev.pop() if s > 0 else None
                check()
                # Inputs are handed over in lists and references dropped as soon as they are used: the peak
                # memory of a window is what limits its size.
                inputs = [y, x_scales[i]]
                x_scales[i] = y = None
                cross = enc_prev + dec_prev if s > 0 else None
                del enc_prev, dec_prev
                y, bridge = getattr(self, f"stage_{s}_encoder_block_{i}")(inputs, cross=cross)
                del cross
                encs.append(bridge)
            for i in range(NUM_BOTTLENECK_BLOCKS):
                check()
                y = getattr(self, f"stage_{s}_global_block_{i}")(y)
            global_feature = y
            skip_features = []
            for i in reversed(range(DEPTH)):
                check()
                skips, global_feature = getattr(self, f"stage_{s}_cross_gating_block_{i}")(
                    self._resized(encs, upsample_index), global_feature)
                upsample_index += len(encs)
                skip_features.append(skips)
            decs = []
            sam_features = []
            output = None
            for i in reversed(range(DEPTH)):
                check()
                inputs = [y, *self._resized(skip_features, upsample_index)]
                y = None
                upsample_index += len(skip_features)
                y = getattr(self, f"stage_{s}_decoder_block_{i}")(inputs)
                decs.append(y)
                if s < NUM_STAGES - 1:
                    sam_features.append(getattr(self, f"stage_{s}_supervised_attention_module_{i}")(y, shortcuts[i]))
                elif i == 0:
                    output = getattr(self, f"stage_{s}_output_conv_0")(y) + shortcuts[0]
            encs_prev = encs[::-1]
            decs_prev = decs
            del encs, decs, skip_features, x_scales
        assert output is not None
        return output
