"""cifake_lib: tell AI-generated images from real ones with CLIP, on CIFAKE.

Label convention everywhere: 1 = FAKE (AI-generated, the positive class), 0 = REAL.
"""

__version__ = "0.1.0"

LABEL_NAMES = ("REAL", "FAKE")  # index == label
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
