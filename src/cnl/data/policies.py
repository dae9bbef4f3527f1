"""The names of the augmentation policies and resampling modes, said once and torch-free:
the settings offer them (``cnl train --help`` loads no torch) and the transforms build them."""

AUTO_AUGMENTS = ("none", "randaugment", "trivialaugment", "autoaugment")
INTERPOLATION_NAMES = ("bilinear", "bicubic", "nearest")
TTA_MODES = ("none", "flip", "flip+crops")  # test-time augmentation of cnl eval
