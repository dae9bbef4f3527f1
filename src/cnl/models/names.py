"""The models' names and settings that the parser and the models share, said once and
torch-free: the suffixes of Table 2's models, the name of random weights and the settings
``create_model`` takes besides a model's name."""

NL, CNL = "_nl5", "_cnl5"  # five NL blocks; one CNL module with five responses
VARIANTS = (CNL, NL)
NO_WEIGHTS = "none"  # random initial weights: what --weights none and a preset's `weights: none` ask for
# Where the modules sit and how wide they are, the backbone's width and its regularization:
# the settings a run stores with its model and create_model takes besides the name.
MODEL_SETTINGS = ("query", "responses", "nl_layers", "inner_channels", "width", "drop_rate", "drop_path")
# What create_model takes for the paper's ResNets, and for torchvision's and timm's backbones
# (no width; a fixed-size backbone, ViT or Swin, is built for img_size).
OVERRIDES = (*MODEL_SETTINGS, "global_pool")
FOREIGN_OVERRIDES = (*(name for name in MODEL_SETTINGS if name != "width"), "img_size", "global_pool")
