"""What normlab measures on generated samples; knows nothing of training.

* Mixtures: ``mixture_metrics`` (PacGAN's modes covered / high-quality fraction, reverse KL).
* Stacked digits (1000 modes): ``stacked_digits_metrics`` (modes covered, KL to uniform, the
  digit classifier's held-out accuracy), ``digit_classifier``, ``StackedDigitFeatures``.
* Images, on features: ``fid``, ``kid``, ``prdc``, or all at once ``image_metrics``.
* Feature networks: ``FeatureNet`` (trained on the dataset itself: ``train_feature_net``,
  ``load_or_train_feature_net``), ``InceptionV3Features`` (the standard FID network, from
  pytorch-fid's weights file), and ``extract_features``.

torchmetrics (used for the FID/KID arithmetic) is imported on first use, not here.
"""

from normlab.metrics.features import (
    FeatureNet,
    extract_features,
    load_feature_net,
    load_or_train_feature_net,
    save_feature_net,
    train_feature_net,
)
from normlab.metrics.fid_score import fid
from normlab.metrics.image import IMAGE_METRICS, image_metrics
from normlab.metrics.inception import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    InceptionV3Features,
    save_random_inception_weights,
)
from normlab.metrics.kid_score import kid
from normlab.metrics.mixture import NUM_EVAL_SAMPLES, mixture_metrics, mode_assignments
from normlab.metrics.prdc_score import prdc
from normlab.metrics.stacked import (
    MIN_CLASSIFIER_ACCURACY,
    NUM_STACKED_EVAL_SAMPLES,
    STACKED_METRICS,
    DigitClassifier,
    StackedDigitFeatures,
    digit_classifier,
    stacked_digits_metrics,
)

__all__ = [
    "IMAGE_METRICS",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "MIN_CLASSIFIER_ACCURACY",
    "NUM_EVAL_SAMPLES",
    "NUM_STACKED_EVAL_SAMPLES",
    "STACKED_METRICS",
    "DigitClassifier",
    "FeatureNet",
    "InceptionV3Features",
    "StackedDigitFeatures",
    "digit_classifier",
    "extract_features",
    "fid",
    "image_metrics",
    "kid",
    "load_feature_net",
    "load_or_train_feature_net",
    "mixture_metrics",
    "mode_assignments",
    "prdc",
    "save_feature_net",
    "save_random_inception_weights",
    "stacked_digits_metrics",
    "train_feature_net",
]
