"""Two token streams packed into one tensor per sample, [B, 1, N1·D1 + N2·D2] (a copy), for
families whose blocks carry two streams that the model decodes (LTX-2's and Kandinsky 6's video
and audio): TeaCache keeps one residual a call, so its residual, reuse and forecasts then cover
both."""

import math

import torch


def pack(first, second):
    batch = first.shape[0]
    return torch.cat([first.reshape(batch, 1, -1), second.reshape(batch, 1, -1)], dim=2)


def unpack(packed, shapes):
    """The two streams back, given their per-sample shapes."""
    first_shape, second_shape = shapes
    batch, split = packed.shape[0], math.prod(first_shape)
    return (packed[:, 0, :split].reshape(batch, *first_shape),
            packed[:, 0, split:].reshape(batch, *second_shape))
