"""raycv: classic computer-vision pipelines on Ray (Data, Train, Tune, Serve)."""

__version__ = "0.1.0"
