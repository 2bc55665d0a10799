"""The kernel every part of shelfsight shares; it imports nothing else from the project.

Errors, image decoding and the one preprocessing step (`fit_square`), ImageFolder labelling,
local features, the model spec sidecar, the `Embedder` interface, the strict config base and
the helpers every command uses. Training, conversion, the catalog and the kiosk all stand on it.
"""
