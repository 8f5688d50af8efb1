"""What normlab measures: gradient explosion and vanishing as they happen, and the bounds.

* ``layer_report(model, *batch)``: per weighted layer, exact sigmas (reshaped and, for
  convolutions, the operator norm on the batch's shapes), weight scale, the loss gradient
  w.r.t. the effective weight, and the network's Lipschitz upper bound.
* ``input_gradient_norm(D, x)``: ``||grad_x D(x)||`` per sample.
* ``Monitor(model, every=...)``: the same quantities over training, cheaply, to a list of
  records, JSON lines and TensorBoard.
* ``max_stable_lr(model, loss_fn, data, momentum)``: ``2 (1 + mu) / lambda_max(Fisher)``.

The ``normlab diagnose`` command (``normlab.experiments.diagnose``) puts them together on a
short GAN training of the standard CNN on the bundled digits.
"""

from normlab.diagnostics.fisher import ggn_vector_product, max_stable_lr
from normlab.diagnostics.input_grad import input_gradient_norm
from normlab.diagnostics.monitor import Monitor
from normlab.diagnostics.report import LayerReport, layer_report

__all__ = [
    "LayerReport",
    "Monitor",
    "ggn_vector_product",
    "input_gradient_norm",
    "layer_report",
    "max_stable_lr",
]
