"""The errors a user can fix before training: bad data, options, or weights that are not installed.

Each is raised with a one-line message naming the file or option and the fix. `ns-train 3dsr` (ThreeDSRTrainer.setup)
prints that line alone and exits 1, instead of a stack trace from deep inside nerfstudio; as Python exceptions they
stay what they were (ValueError, FileNotFoundError, RuntimeError) for code that catches those.
"""

from __future__ import annotations


class SetupError(Exception):
    """A problem with the user's input or installation, found while the run is set up; one line, with the fix."""


class UnsupportedScaleError(SetupError, ValueError):
    """An SR backend cannot produce the upscale factor asked for."""


class BackendLoadError(SetupError, RuntimeError):
    """An SR model cannot be loaded (not on disk, hub offline, a package missing)."""


class UnsupportedOptionError(SetupError, ValueError):
    """An option the chosen SR backend cannot honour (e.g. a VAE dtype for a backend without a VAE)."""
