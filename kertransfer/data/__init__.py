"""Images and labels for training, in the order the data flows.

- `sources`: folders (fast.ai's and Keras's layouts) and label CSVs -> paths
  and labels (`read_folders`, `read_csv`);
- `splits`: the held-out validation split, subsamples, and `Split` (one
  split's files and labels, decoded through a store);
- `cache`: where decoded pixels live (memory, disk, or streamed);
- `batches`: `ImageBatches` (decoded, cropped, augmented on the fly) and
  `FeatureBatches` (precomputed activations by index);
- `front`: `ImageClassifierData`, the fast.ai-named front users build;
  `preview`: its augmented samples and their plot.
"""

from kertransfer.data.batches import FeatureBatches
from kertransfer.data.batches import ImageBatches
from kertransfer.data.front import ImageClassifierData

__all__ = ["FeatureBatches", "ImageBatches", "ImageClassifierData"]
