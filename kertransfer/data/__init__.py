"""Images and labels for training: sources, caches, batches, and their front.

- `sources`: folders (fast.ai's and Keras's layouts) and label CSVs -> paths
  and labels;
- `cache`: where decoded pixels live (memory, disk, or streamed);
- `batches`: `Split`, `ImageBatches` (decoded, cropped, augmented on the
  fly) and `FeatureBatches` (precomputed activations by index);
- `front`: `ImageClassifierData`, the fast.ai-named front users build.
"""

from kertransfer.data.batches import FeatureBatches
from kertransfer.data.batches import ImageBatches
from kertransfer.data.front import ImageClassifierData

__all__ = ["FeatureBatches", "ImageBatches", "ImageClassifierData"]
