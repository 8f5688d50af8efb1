"""Layers of every supported kind, with their fan-in and output dim written out by hand."""

from torch import nn


def layer_cases():
    """(id, factory, fan_in, output dim, input shape for one sample)."""
    return [
        ("linear", lambda: nn.Linear(12, 7), 12, 0, (12,)),
        ("conv1d", lambda: nn.Conv1d(4, 6, 3, padding=1), 4 * 3, 0, (4, 9)),
        ("conv2d", lambda: nn.Conv2d(3, 8, 3, padding=1), 3 * 9, 0, (3, 6, 6)),
        ("conv2d_s2", lambda: nn.Conv2d(4, 6, 4, stride=2, padding=1), 4 * 16, 0, (4, 8, 8)),
        ("conv2d_grouped", lambda: nn.Conv2d(8, 6, 3, groups=2, dilation=2), 4 * 9, 0, (8, 9, 9)),
        ("conv3d", lambda: nn.Conv3d(2, 4, 2), 2 * 8, 0, (2, 4, 4, 4)),
        ("convT1d", lambda: nn.ConvTranspose1d(5, 3, 4, stride=2, padding=1), 5 * 4, 1, (5, 6)),
        ("convT2d", lambda: nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1), 6 * 16, 1, (6, 4, 4)),
        (
            "convT2d_grouped",
            lambda: nn.ConvTranspose2d(6, 4, 3, groups=2, output_padding=1, stride=2),
            3 * 9,
            1,
            (6, 4, 4),
        ),
        ("convT3d", lambda: nn.ConvTranspose3d(2, 3, 2), 2 * 8, 1, (2, 3, 3, 3)),
        ("embedding", lambda: nn.Embedding(10, 5), 1, 0, None),
    ]


def sample_input(layer, shape, batch=3):
    import torch

    if isinstance(layer, nn.Embedding):
        return torch.randint(0, layer.num_embeddings, (batch, 4))
    return torch.randn(batch, *shape)
