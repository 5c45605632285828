"""ptransfer: soft prompt tuning and prompt transfer on frozen JAX/Flax models."""

__version__ = "0.1.0"


def load_backbone(spec: str, **kwargs):
    """Loads a frozen backbone; see `ptransfer.backbones.load_backbone`."""
    # Imported on use: the package root stays free of jax / flax, so that
    # `ptransfer --help`, `ptransfer.core` and `tasks` import in milliseconds.
    from ptransfer.backbones import load_backbone as _load

    return _load(spec, **kwargs)
