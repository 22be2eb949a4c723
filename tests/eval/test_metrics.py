"""Metric identities on fixed arrays."""
import numpy as np
import pytest

from audiomamba.eval import metrics


@pytest.fixture
def feats():
    return np.random.default_rng(0).normal(size=(4000, 6))


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_adds_its_squared_norm(feats):
    assert abs(metrics.fid(feats, feats)) < 1e-6
    shift = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    # Same covariance, means apart by `shift`: FID = |shift|^2 exactly.
    assert metrics.fid(feats, feats + shift) == pytest.approx((shift**2).sum(), rel=1e-6)


def test_fid_of_scaled_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200_000, 2))
    b = 2 * rng.normal(size=(200_000, 2))
    # Covariances I and 4I: trace(I + 4I - 2 * 2I) = 2 * (1 + 4 - 4) = 2.
    assert metrics.fid(a, b) == pytest.approx(2.0, abs=0.05)


def test_inception_score_is_the_class_count_for_confident_even_predictions_and_1_for_identical():
    confident = np.eye(10)[np.arange(1000) % 10]
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert metrics.inception_score(np.tile([0.7, 0.2, 0.1], (50, 1))) == pytest.approx(1.0)


def test_modified_inception_score_on_hand_computed_cases():
    assert metrics.modified_inception_score(np.tile([0.5, 0.5], (6, 1))) == pytest.approx(1.0)
    # Two clips, p = (0.9, 0.1) and q = (0.1, 0.9): mean of KL(p||q) and KL(q||p) = 0.8 ln 9.
    p = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert metrics.modified_inception_score(p) == pytest.approx(np.exp(0.8 * np.log(9)), rel=1e-6)


def test_am_score_is_marginal_kl_plus_mean_entropy():
    real = np.eye(2)[[0, 1, 0, 1]]  # real marginal (0.5, 0.5)
    fake = np.array([[0.5, 0.5], [0.5, 0.5]])  # same marginal, entropy ln 2 each
    assert metrics.am_score(real, fake) == pytest.approx(np.log(2))
    fake = np.eye(2)[[0, 0]]  # confident, but only class 0: KL((.5,.5) || (1,0)) is huge
    assert metrics.am_score(real, fake) > 10


def test_ndb_of_a_set_against_itself_is_zero_and_counts_missing_modes(feats):
    assert metrics.ndb(feats, feats, k=20) == 0
    half = feats[feats[:, 0] > 0]  # a generator that drops half of the distribution
    assert metrics.ndb(feats, half, k=20) >= 8
