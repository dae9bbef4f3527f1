"""Table 2 of the paper, as printed: what ``cnl profile`` sets its counts beside.

No torch here: the ``cnl`` command's parser lists these models as ``profile``'s default.
"""

# (params x10^7, printed "Flops (x10^9)", i.e. MACs x10^10 at 448x448, 200 classes)
TABLE2 = {
    "resnet50": (2.39, 1.64),
    "resnet50_nl5": (3.13, 2.48),
    "resnet50_cnl5": (2.71, 2.03),
    "resnet101": (4.29, 3.15),
    "resnet101_nl5": (5.03, 3.96),
    "resnet101_cnl5": (4.61, 3.52),
}
