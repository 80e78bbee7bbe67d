"""Old name of `sidecar.trigger`, kept only while other branches still import it; to be removed."""

from .trigger import *  # noqa: F403
