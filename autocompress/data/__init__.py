"""Input data for every stage: in-process loaders and the `Dataset` folder format (DESIGN §6).

- `FeedSource.from_any(obj, feed_names, label_field=None)`: DataLoader, re-iterable, generator
  function, Dataset folder path -> re-iterable `Batch(feed, label)` numpy batches.
- `FeedSource.from_arrays(feeds, labels=None, batch_size=32)`: in-memory numpy data.
- `write_dataset` / `write_source` / `read_dataset`: npz Dataset folders; `write_image_list` indexes
  an image folder with a declared preprocessing.

Modules, each importing only those above it: `batch` (Batch, conversion, regrouping), `folder`
(dataset.yaml and its checks), `plugin` (user plugins), `npz` / `images` (the two file formats),
`formats` (dispatch on dataset.yaml), `source` (FeedSource), `dataset` (read/write functions).
"""
from .batch import Batch, to_numpy
from .dataset import DATASET_FILE, load_dataset_yaml, read_dataset, write_dataset, write_source
from .images import Preprocess, write_image_list
from .source import FeedSource

__all__ = ["Batch", "FeedSource", "to_numpy", "read_dataset", "write_dataset", "write_source",
           "write_image_list", "load_dataset_yaml", "Preprocess", "DATASET_FILE"]
