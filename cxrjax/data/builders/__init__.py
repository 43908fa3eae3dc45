"""The cxrjax TFDS builders, listed explicitly (nothing is registered on import).

DATASETS maps the dataset name used everywhere (configs, CLI, `cxrjax.data.load`) to
its builder class. The classes are defined with `skip_registration=True`, so they stay
out of TFDS's global registry; `tfds.builder("covid19_radiography")` is not the way to
reach them, `cxrjax.data.load(...)` is.
"""

from cxrjax.data.builders.base import REPORT_FILE, CxrBuilder
from cxrjax.data.builders.image_dataset import Covid19ImageDataset
from cxrjax.data.builders.image_folder import ImageFolderBuilder
from cxrjax.data.builders.options import CarveOptions, PhantomDatasetOptions, PreparationOptions, SplitOptions
from cxrjax.data.builders.phantoms import CxrPhantoms
from cxrjax.data.builders.radiography import Covid19Radiography

DATASETS: dict[str, type[CxrBuilder]] = {
    "covid19_radiography": Covid19Radiography,
    "covid19_image_dataset": Covid19ImageDataset,
    "image_folder": ImageFolderBuilder,
    "cxr_phantoms": CxrPhantoms,
}

__all__ = [
    "DATASETS",
    "REPORT_FILE",
    "CarveOptions",
    "Covid19ImageDataset",
    "Covid19Radiography",
    "CxrBuilder",
    "CxrPhantoms",
    "ImageFolderBuilder",
    "PhantomDatasetOptions",
    "PreparationOptions",
    "SplitOptions",
]
