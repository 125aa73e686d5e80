"""Stage 2, the models (paper sections 3.2-3.4): ``backbones`` (VGG16, ResNet50
and the lightweight models with the transfer head), ``weights`` (ImageNet weight
files: download, verify, offline stand-ins), ``pipeline`` (``tf.data`` input
and label encoding) and ``gradcam`` (heat maps, shared by the studies and the
web service). Imports ``data`` only for the image cache.
"""
