"""The stage scripts DVC runs (`python -m stages.<name>`). With CXR_WARM=1 a stage runs in a child
of a warm server that has torch and the project imported (cxr_transfer/core/warm.py); this runs
before the stage's module is imported."""

from cxr_transfer.core.warm import forward_if_warm

forward_if_warm()
