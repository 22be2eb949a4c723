"""The SC09 sample-quality metrics, from a classifier's features and class probabilities.

- FID (Heusel et al. 2017): Frechet distance between Gaussians fitted to penultimate activations.
- IS (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)). Higher is better; at most the class count.
- mIS (Gurumurthy et al. 2017): exp E_{x, x'} KL(p(y|x) || p(y|x')), over pairs of generated clips.
- AM (Zhou et al. 2018): KL(p_real(y) || p_gen(y)) + E_x H(p(y|x)). Lower is better.
- NDB (Richardson & Weiss 2018): K-means bins on real features. NDB is the number of bins where the
  generated share differs from the real share (two-proportion z-test, alpha = 0.05).

These follow the DiffWave and SaShiMi evaluations. Inputs are numpy arrays: features (n, d),
probabilities (n, classes).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats

EPS = 1e-12


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussians of two feature sets, (n, d) and (m, d)."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # nearly singular: regularise as the reference FID code does
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) along the last axis."""
    return (p * (np.log(p + EPS) - np.log(q + EPS))).sum(-1)


def inception_score(probs: np.ndarray) -> float:
    return float(np.exp(_kl(probs, probs.mean(0, keepdims=True)).mean()))


def modified_inception_score(probs: np.ndarray) -> float:
    """exp of the mean KL over all ordered pairs (i, j), i != j, of generated clips."""
    logp = np.log(probs + EPS)
    # sum_ij KL(p_i || p_j) = sum_i sum_k p_ik log p_ik * n - sum_ij sum_k p_ik log p_jk
    n = len(probs)
    self_term = (probs * logp).sum() * n
    cross = (probs @ logp.T).sum()
    return float(np.exp((self_term - cross) / (n * (n - 1))))


def am_score(real_probs: np.ndarray, fake_probs: np.ndarray) -> float:
    entropy = -(fake_probs * np.log(fake_probs + EPS)).sum(-1).mean()
    return float(_kl(real_probs.mean(0), fake_probs.mean(0)) + entropy)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Centroids (k, d) of Lloyd's k-means with k-means++ seeding."""
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = ((x[:, None] - np.array(centroids)[None]) ** 2).sum(-1).min(1)
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(x))])
    centroids = np.array(centroids)
    for _ in range(iterations):
        assign = _nearest(x, centroids)
        updated = np.array([x[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def ndb(real: np.ndarray, fake: np.ndarray, k: int = 50, alpha: float = 0.05, seed: int = 0) -> int:
    """Number of the k bins (k-means on ``real``) whose share of ``fake`` differs significantly."""
    k = min(k, len(real))
    centroids = kmeans(real, k, seed)
    real_counts = np.bincount(_nearest(real, centroids), minlength=k)
    fake_counts = np.bincount(_nearest(fake, centroids), minlength=k)
    n1, n2 = len(real), len(fake)
    p1, p2 = real_counts / n1, fake_counts / n2
    pooled = (real_counts + fake_counts) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.where(se > 0, (p1 - p2) / np.maximum(se, EPS), 0.0)
    p_values = 2 * scipy.stats.norm.sf(np.abs(z))
    return int((p_values < alpha).sum())


def all_metrics(real_train_feats, real_train_probs, feats, probs, ndb_bins: int = 50) -> dict:
    """Every metric of one set of clips against the real training set."""
    return {
        "FID": fid(real_train_feats, feats),
        "IS": inception_score(probs),
        "mIS": modified_inception_score(probs),
        "AM": am_score(real_train_probs, probs),
        "NDB": ndb(real_train_feats, feats, ndb_bins),
        "n": int(len(feats)),
    }
