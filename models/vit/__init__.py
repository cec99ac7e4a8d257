"""ViT / DeiT: backbone, image converter, preprocessor and classifier."""

from .patch_embedding import PatchEmbedding
from .vit_backbone import ViTBackbone
from .vit_image_classifier import ViTImageClassifier
from .vit_image_classifier_preprocessor import ViTImageClassifierPreprocessor
from .vit_image_converter import ViTImageConverter
