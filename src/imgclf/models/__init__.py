"""Network architectures: a registry of names (``registry``) and one module per architecture.

Importing this package registers every architecture; the registry itself imports none of them.

Usage::

    from imgclf.models import registry
    print(registry.names())  # ['keras_graph', 'seed_resnet', 'small_cnn'] (and families: timm:NAME)
"""

from imgclf.models import keras_graph, seed_resnet, small_cnn, timm_backbone  # noqa: F401  (imported to register the builders)
