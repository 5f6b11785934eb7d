"""Registered models. Importing this package registers every builder with ``dsconv.registry``."""

from dsconv.models import cifar_cnn, densenet, mnist_cnn, mobilenet, torchvision_models  # noqa: F401
from dsconv.models import scratch_models as scratch_models  # scratch_cnn, scratch_transformer
