"""The stage scripts DVC runs (`python -m stages.<name>`). With CXR_WARM=1 a stage runs in a child
of a warm server that has torch and the project imported (cxr_transfer/core/warm.py); this runs
before the stage's module is imported.

LIGHT: the stages that import only the project's core and data packages, never torch (a contract
in pyproject.toml holds them to it; scikit-learn only for k folds' split). Their own start takes
0.1-0.3 s, so while the server is still importing (about 4 s) they run in their own process
instead of waiting; the first of them starts it, so it listens by the first stage that needs it."""

from cxr_transfer.core.warm import forward_if_warm

LIGHT = frozenset({"check_params", "synthesize", "index", "split", "prepare", "external"})

forward_if_warm(LIGHT)
