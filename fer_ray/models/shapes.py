"""Output sizes of convolution and pooling layers, used to size the classifier head.

For one spatial axis with input size n, padding p, kernel k and stride s::

    out = floor((n + 2p - k) / s) + 1

(The seed report wrote it without the ``+ 1`` and used the width for both axes; both are
wrong for non-square inputs or kernels.) Height and width are computed independently.
"""

from __future__ import annotations

from fer_ray.errors import ConfigError


def conv_output_size(n: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> int:
    """Size of one axis after a convolution or pooling window: floor((n+2p-d(k-1)-1)/s) + 1.

    With dilation 1 this is floor((n + 2p - k)/s) + 1. Raises ConfigError when the window
    does not fit (the output would be empty).
    """
    if min(n, kernel, stride, dilation) < 1 or padding < 0:
        raise ConfigError(f"invalid conv geometry n={n} k={kernel} s={stride} p={padding}")
    out = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ConfigError(
            f"a {kernel}x{kernel} window (padding {padding}, stride {stride}) does not fit "
            f"a feature map of size {n}"
        )
    return out


def conv2d_output_shape(hw: tuple[int, int], kernel: int | tuple[int, int],
                        stride: int = 1, padding: int | tuple[int, int] = 0) -> tuple[int, int]:
    """(height, width) after a 2-D conv/pool; each axis uses its own size, kernel and padding."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return (conv_output_size(hw[0], kh, stride, ph), conv_output_size(hw[1], kw, stride, pw))
