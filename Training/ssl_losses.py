"""SwinFUSE's self-supervised loss that no library has: the KDE density term (NT-Xent is MONAI's ContrastiveLoss).

The pretraining objective (Training.pretraining) is

    L = w_inpaint * L1(reconstruction, clean view) + w_rotation * CE(rotation) + w_contrast * NT-Xent
        - w_density * JSD(p_m1, p_m2)

SwinFUSE writes L_total = L_inpaint + L_contrast + L_rot - L_JSD: the Jensen-Shannon divergence between the
kernel-density estimates of two modalities' features is *subtracted*, i.e. pretraining pushes the feature
densities of different modalities apart (the paper's "complementary feature representations"), while the
contrastive term pulls the two modality views of the same crop together. We keep the paper's sign; a negative
`density_weight` turns the term into density matching (minimising the JSD) for anyone who wants invariance.
"""

import torch
import torch.nn.functional as F


def gaussian_kde(points, samples, bandwidth):
    """Kernel-density estimate of `samples` (N, E) at `points` (M, E): mean of exp(-|x - x_n|^2 / 2 sigma^2).

    The kernel's normalising constant is left out: it is the same for both densities of `kde_jsd` (same
    bandwidth and dimension) and cancels in every ratio the divergence takes.
    """
    distances = torch.cdist(points, samples).square()
    return torch.exp(-distances / (2 * bandwidth ** 2)).mean(1)


def kde_jsd(features_a, features_b, eps=1e-8):
    """Jensen-Shannon divergence (nats; in [0, log 2] up to Monte-Carlo error) between the densities of two feature sets (N, E), (M, E).

    Each density is a Gaussian KDE of its L2-normalised samples with one shared bandwidth, the median distance
    between samples of the same set (detached: it sets the scale, it is not learnt; distances across the sets
    would widen the kernels exactly when the densities are apart and hide the divergence). The divergence is the Monte-Carlo
    estimate on the samples themselves: 1/2 E_a[log p_a / m] + 1/2 E_b[log p_b / m], m = (p_a + p_b) / 2.
    """
    a = F.normalize(features_a.float(), dim=1)
    b = F.normalize(features_b.float(), dim=1)
    with torch.no_grad():
        within = torch.cat([torch.pdist(a), torch.pdist(b)])
        bandwidth = within.median().clamp_min(1e-3) if within.numel() else torch.tensor(1.0)

    def half(points):
        p_a, p_b = gaussian_kde(points, a, bandwidth), gaussian_kde(points, b, bandwidth)
        return p_a, p_b, (p_a + p_b) / 2

    p_a, p_b, m = half(a)
    on_a = (torch.log(p_a + eps) - torch.log(m + eps)).mean()
    p_a, p_b, m = half(b)
    on_b = (torch.log(p_b + eps) - torch.log(m + eps)).mean()
    return 0.5 * (on_a + on_b)


def voxel_features(deepest):
    """(B, C, d, h, w) -> (B * d * h * w, C): every voxel of the deepest map is one sample of the density."""
    return deepest.flatten(2).transpose(1, 2).reshape(-1, deepest.shape[1])
