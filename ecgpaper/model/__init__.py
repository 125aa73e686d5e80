"""Stage 2, the models (paper sections 3.2-3.4): ``backbones`` (VGG16, ResNet50
and the lightweight models with the transfer head), ``imagenet`` (Keras's ImageNet
weight files: find, verify, fetch), ``standin`` (the offline VGG16 stand-in),
``fetch`` (their HTTP downloads), ``pipeline`` (``tf.data`` input
and label encoding) and ``gradcam`` (heat maps, shared by the studies and the
web service). Imports ``data`` only for the image cache.
"""
