"""Metrics of a generator: the mixture metrics for 2-D data, FID/KID/PRDC on features for images.

For images the features come from pytorch-fid's Inception-v3 when the run names its weights
file (``inception_weights``), and otherwise from a small network trained on the dataset
itself (``normlab.metrics.FeatureNet``), cached in the run folder (``feature_net.pt``) or
at ``feature_cache``: numbers comparable between runs on the same data, not with published
Inception FIDs.

On ``stacked-digits`` the feature network is the mode counter's digit classifier
(``normlab.metrics.StackedDigitFeatures``, cached as ``digit_classifier.pt`` or at
``feature_cache``), and every evaluation also classifies ``NUM_STACKED_EVAL_SAMPLES`` (26,000)
samples for ``modes_covered``, ``kl`` and ``classifier_accuracy``
(``normlab.metrics.stacked_digits_metrics``); FID/KID/PRDC use the first ``eval_samples`` of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from normlab.data import Data
from normlab.gan.config import TrainConfig

#: Seed offset of the fixed latent vectors used for evaluation (never the training streams).
EVAL_SEED_OFFSET = 7919
#: Real images whose features the image metrics compare against: all of the data, at most this
#: many (the BSN code compares 10k generated with 5k real).
MAX_REAL_EVAL = 5_000
FEATURE_NET_FILE = "feature_net.pt"
#: How FID and KID are scaled (both as computed: no x1000 as some papers print KID).
FID_SCALE = "squared distance in feature units, as is"
KID_SCALE = "squared MMD (cubic kernel), as is, not x1000"
#: The stacked-digits classifier's cache file in the run folder.
DIGIT_CLASSIFIER_FILE = "digit_classifier.pt"


def image_metric_note(info: dict) -> str:
    """One line naming the feature space and scale of FID/KID (``""`` without image metrics)."""
    if not info.get("feature_space"):
        return ""
    return f"fid and kid on {info['feature_space']}; fid: {info['fid']}; kid: {info['kid']}"


def _is_stacked(data: Data) -> bool:
    from normlab.data.stacked import STACKED_SPEC

    return data.spec == STACKED_SPEC


@torch.no_grad()
def generate(G: nn.Module, n: int, z_dim: int, seed: int, device: str, batch: int = 500) -> Tensor:
    """``n`` samples of ``G`` (in the mode it is in) from seeded latents, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_dim, generator=gen)
    return torch.cat([G(z[i : i + batch].to(device)).float().cpu() for i in range(0, n, batch)])


class Evaluator:
    """Computes a run's metrics for any generator; the real features are computed once."""

    def __init__(self, cfg: TrainConfig, data: Data, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.data = data
        self.run_dir = Path(run_dir)
        self._net: nn.Module | None = None
        self._real: Tensor | None = None
        #: What FID/KID are computed on (set once the features are ready; None for mixtures).
        self.feature_space: str | None = None

    def prepare(self) -> None:
        """Load or train the feature network now (a bad weights file fails before training)."""
        if self.data.kind == "images":
            self._features()

    def _features(self) -> tuple[nn.Module, Tensor]:
        import normlab.metrics as M

        if self._net is None:
            images = self.data.as_images(self.data.images)
            if self.cfg.inception_weights:
                self._net = M.InceptionV3Features.from_weights(self.cfg.inception_weights).to(
                    self.cfg.device
                )
                self.feature_space = "Inception-v3 pool3 features (2048-d, pytorch-fid weights)"
            elif _is_stacked(self.data):
                self._net = M.StackedDigitFeatures(self._classifier()).to(self.cfg.device)
                self.feature_space = (
                    "the stacked-digits classifier's features (its hidden layer on each channel, "
                    "concatenated; not comparable with Inception FIDs)"
                )
            else:
                cache = self.cfg.feature_cache or self.run_dir / FEATURE_NET_FILE
                self._net = M.load_or_train_feature_net(
                    cache, images, self.data.labels, device=self.cfg.device
                )
                dim = getattr(self._net, "feature_dim", "?")
                self.feature_space = (
                    f"the features of a small network trained on {self.cfg.data} ({dim}-d; "
                    "not comparable with Inception FIDs)"
                )
            real = self.data.real_sample(MAX_REAL_EVAL, seed=self.cfg.seed + EVAL_SEED_OFFSET)
            self._real = M.extract_features(self._net, self.data.as_images(real))
        assert self._real is not None
        return self._net, self._real

    def metric_info(self) -> dict[str, str]:
        """``{"feature_space", "fid", "kid"}``: what the image metrics are computed on and
        their scale (empty for mixtures); stored in metrics.json as ``metric_info``."""
        if self.data.kind != "images":
            return {}
        self._features()
        return {"feature_space": self.feature_space or "?", "fid": FID_SCALE, "kid": KID_SCALE}

    def _classifier(self):
        import normlab.metrics as M

        cache = self.cfg.feature_cache or self.run_dir / DIGIT_CLASSIFIER_FILE
        return M.digit_classifier(cache)

    def __call__(self, G: nn.Module, n: int | None = None) -> dict:
        """Metrics of ``G`` (evaluated in eval mode; its mode is restored) on ``n`` samples."""
        import normlab.metrics as M

        n = n or self.cfg.eval_samples
        stacked = _is_stacked(self.data)
        n_draw = max(n, M.NUM_STACKED_EVAL_SAMPLES) if stacked else n
        was = G.training
        G.eval()
        try:
            fake = generate(
                G, n_draw, self.cfg.z_dim, self.cfg.seed + EVAL_SEED_OFFSET, self.cfg.device
            )
        finally:
            G.train(was)
        if self.data.kind == "mixture":
            return M.mixture_metrics(fake, self.data.mixture)
        if not torch.isfinite(fake).all():
            keys = M.IMAGE_METRICS + (M.STACKED_METRICS if stacked else ())
            return {k: float("nan") for k in keys}
        out = {}
        if stacked:
            images = self.data.as_images(fake)
            out = M.stacked_digits_metrics(images, classifier=self._classifier())
        net, real = self._features()
        fake_feats = M.extract_features(net, self.data.as_images(fake[:n]))
        return {**out, **M.image_metrics(real, fake_feats, seed=self.cfg.seed)}


def evaluate_run(run_dir: str | Path, *, n: int | None = None) -> dict:
    """Metrics of a finished or running run's generator (its EMA where kept), from its latest
    good checkpoint, on ``n`` samples (default: the run's ``eval_samples``).

    Returns the metrics (``modes_covered``, ``high_quality_frac``, ``reverse_kl`` for
    mixtures; ``fid``, ``kid``, ``precision``, ``recall``, ``density``, ``coverage`` for
    images, after ``modes_covered``, ``kl``, ``classifier_accuracy`` for stacked digits) plus
    ``step``, the checkpoint's step, and for images ``metric_info`` (see
    ``Evaluator.metric_info``).
    """
    from normlab.gan.run import generator_for_eval

    cfg, data, G, step = generator_for_eval(run_dir)
    evaluator = Evaluator(cfg, data, run_dir)
    out = {"step": step, **evaluator(G, n)}
    info = evaluator.metric_info()
    return {**out, "metric_info": info} if info else out
