"""The napari front end: readers that keep a volume's geometry, and the "Patch corrections"
dock widget that runs a correction round (open patches, paint Add / Remove / Ignore, save,
merge) through the same workflows as the command line.

Optional: install with ``pip install "patch_corrections[napari]"``. Nothing in the package
imports this subpackage; napari finds it through the ``napari.manifest`` entry point.
"""

from ._reader import get_reader, layer_data

__all__ = ["CorrectionsWidget", "get_reader", "layer_data"]


def __getattr__(name: str):
    # The widget pulls in Qt; the readers do not need it.
    if name == "CorrectionsWidget":
        from ._widget import CorrectionsWidget

        return CorrectionsWidget
    raise AttributeError(name)
