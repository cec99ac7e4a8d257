"""Base class of the zoo's functional models: presets, config, torch fix."""

import keras

from .presets import get_preset


class ZooModel(keras.Model):
    """A functional model whose layers are attributes set before
    `super().__init__(inputs, outputs)`, as in keras-hub's backbones.

    Subclasses set `presets` (name -> constructor arguments) and build their
    graph in `__init__`; `get_config` starts from `_base_config()`.
    """

    presets = {}

    def __setattr__(self, name, value):
        # The torch backend's Module refuses attributes before its __init__;
        # the functional graph tracks the layers, so route around it.
        uninitialized = not hasattr(self, "_initialized")
        if keras.config.backend() == "torch" and uninitialized:
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the named size preset with random weights.

        Args:
            preset: A name of `cls.presets` (see `collab_keras.models.presets`).
            **kwargs: Constructor arguments overriding or adding to it, e.g.
                `attention="collaborative", shared_key_dim=128`.

        Returns:
            A new model.
        """
        config = get_preset(cls.presets, preset)
        config.update(kwargs)
        return cls(**config)

    def _base_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }
