"""Names from Paddle's own tables, kept static so config validation needs no Paddle import (each
pipeline stage validates its config; importing Paddle there costs seconds). A test checks that these
equal the tables of the pinned Paddle version, so an upgrade cannot drift silently."""

# paddle.static.quantization.quant_config.SUPPORT_QUANTIZATION_OP_DICT
QUANTIZABLE_OP_TYPES = frozenset({
    "abs", "arg_max", "argmax", "assign", "batch_norm", "bilinear_interp", "bilinear_interp_v2",
    "box_coder", "cast", "clip", "concat", "conv2d", "conv2d_transpose", "crop", "cumsum",
    "depthwise_conv2d", "dropout", "elementwise_add", "elementwise_mul", "elementwise_pow",
    "elementwise_sub", "equal", "expand_v2", "fill_any_like", "fill_constant",
    "fill_constant_batch_size_like", "flatten", "flatten2", "flatten_contiguous_range", "gather", "gelu",
    "greater_equal", "greater_than", "grid_sampler", "group_norm", "gru", "hard_sigmoid", "hard_swish",
    "instance_norm", "layer_norm", "leaky_relu", "less_equal", "less_than", "logical_and", "logical_not",
    "lookup_table", "lookup_table_v2", "lstm", "matmul", "matmul_v2", "mean", "meshgrid", "mul",
    "nearest_interp", "nearest_interp_v2", "norm", "not_equal", "p_norm", "pad2d", "pad3d", "pool2d", "pow",
    "prelu", "reduce_max", "reduce_mean", "reduce_sum", "relu", "relu6", "reshape", "reshape2", "roi_align",
    "scale", "shuffle_channel", "sigmoid", "slice", "softmax", "softplus", "split", "square", "squeeze",
    "squeeze2", "stack", "strided_slice", "swish", "tanh", "tile", "top_k_v2", "transpose", "transpose2",
    "trilinear_interp", "unsqueeze2", "where"
})

# optimizer classes in paddle.optimizer
OPTIMIZERS = frozenset({
    "ASGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Lamb", "Momentum", "NAdam", "RAdam",
    "RMSProp", "Rprop", "SGD"
})

# LRScheduler classes in paddle.optimizer.lr
LR_SCHEDULERS = frozenset({
    "CosineAnnealingDecay", "CosineAnnealingWarmRestarts", "CyclicLR", "ExponentialDecay",
    "InverseTimeDecay", "LambdaDecay", "LinearLR", "LinearWarmup", "MultiStepDecay", "MultiplicativeDecay",
    "NaturalExpDecay", "NoamDecay", "OneCycleLR", "PiecewiseDecay", "PolynomialDecay", "ReduceOnPlateau",
    "StepDecay"
})
