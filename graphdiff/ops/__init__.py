"""The op functions, one module per family. Each op class holds its shape
rule, its kernel (written against an array module ``xp``) and its VJP rule."""
from .avg_pool import adaptive_avg_pool2d, adaptive_avg_pool2d_grad, avg_pool2d, avg_pool2d_grad
from .conv import conv2d, conv2d_grad_input, conv2d_grad_weight
from . import conv_rewrites  # noqa: F401 - registers the convolution's compile-time rewrites
from .elementwise import (abs_, add, cast, div, equal, exp, greater, greater_equal, less, less_equal, log,
                          maximum, minimum, mul, neg, not_equal, pow, relu, relu_grad, sigmoid, sign, sqrt, step, sub,
                          tanh, where)
from .linalg import matmul
from .lrn import lrn, lrn_within, normalize_cross_map, window_sum_channels, window_sum_spatial
from .nn import dropout, log_softmax, one_hot, softmax, softmax_cross_entropy, stop_gradient
from .pool import max_pool2d, max_pool2d_argmax, max_pool2d_gather, max_pool2d_grad
from .reduce import broadcast_like, broadcast_to, max, mean, sum, sum_to
from .shape import concatenate, expand_dims, getitem, pad, reshape, split, squeeze, transpose

abs = abs_  # noqa: A001 - NumPy's name
