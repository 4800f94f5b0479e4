"""Dense metrics against hand-computed values; many batches == one pass over their concatenation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.dense_metrics import (
    HIGHER_IS_BETTER,
    PRIMARY,
    AccuracyMetric,
    DepthMetric,
    NormalMetric,
    SegmentationMetric,
    accuracy,
    delta_m,
    depth_metrics,
    metric_for,
    normal_metrics,
    segmentation_metrics,
)

# 3×3 image, 4 classes; class 3 is predicted only at the ignored pixel, so its union is 0.
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, 2], [2, -100, 0]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [1, 2, 0], [2, 3, 0]]])
SEG_CONFUSION = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])
# IoU: class 0 = 2 / (3 + 3 - 2), class 1 = 2 / (2 + 3 - 2), class 2 = 2 / (3 + 2 - 2).
SEG_MIOU = (1 / 2 + 2 / 3 + 2 / 3) / 3
SEG_PIXEL_ACC = 6 / 8


def _logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float()


def test_segmentation_hand_computed_confusion_miou_and_pixel_acc():
    metric = SegmentationMetric(4)
    metric.update(SEG_PRED, SEG_TARGET)
    assert torch.equal(metric.confusion, SEG_CONFUSION)
    assert metric.confusion.dtype == torch.int64
    result = metric.compute()
    assert result["miou"] == pytest.approx(SEG_MIOU)
    assert result["pixel_acc"] == pytest.approx(SEG_PIXEL_ACC)
    assert math.isnan(float(metric.class_iou()[3]))


def test_segmentation_logits_equal_labels():
    assert segmentation_metrics(_logits(SEG_PRED, 4), SEG_TARGET, 4) == pytest.approx(
        segmentation_metrics(SEG_PRED, SEG_TARGET, 4)
    )


def test_segmentation_class_only_predicted_counts_with_iou_zero():
    # class 0: 3 / 4; class 1 (predicted once, never a target): 0 / 1; class 2 absent: excluded.
    result = segmentation_metrics(torch.tensor([[[0, 1], [0, 0]]]), torch.zeros(1, 2, 2).long(), 3)
    assert result["miou"] == pytest.approx((3 / 4 + 0) / 2)
    assert result["pixel_acc"] == pytest.approx(3 / 4)


def test_segmentation_ignore_index_and_targets_outside_range_are_skipped():
    target = SEG_TARGET.clone()
    target[target == -100] = -1  # NYUv2's files mark ignored pixels with -1
    assert segmentation_metrics(SEG_PRED, target, 4, ignore_index=-1) == pytest.approx(
        {"miou": SEG_MIOU, "pixel_acc": SEG_PIXEL_ACC}
    )
    target[0, 0, 0] = 9  # outside [0, 4): skipped too
    metric = SegmentationMetric(4)
    metric.update(SEG_PRED, target)
    assert int(metric.confusion.sum()) == 7
    # float labels holding integers (as read from .npy) are accepted
    assert segmentation_metrics(SEG_PRED, SEG_TARGET.float(), 4)["pixel_acc"] == pytest.approx(
        SEG_PIXEL_ACC
    )


def test_depth_hand_computed_with_an_invalid_pixel():
    target = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    pred = torch.tensor([[[[1.2, 3.2], [5.0, 4.0]]]])  # the pixel with target 0 is ignored
    result = depth_metrics(pred, target)
    # valid (p, t): (1.2, 1), (3.2, 2), (4, 4); ratios 1.2, 1.6, 1.0
    expected = {
        "abs_err": (0.2 + 1.2 + 0) / 3,
        "rel_err": (0.2 + 0.6 + 0) / 3,
        "sq_rel": (0.04 + 0.72 + 0) / 3,
        "rmse": math.sqrt((0.04 + 1.44 + 0) / 3),
        "delta1": 2 / 3,  # 1.2 and 1.0 < 1.25
        "delta2": 2 / 3,  # 1.6 > 1.5625
        "delta3": 1.0,  # 1.6 < 1.953125
    }
    assert result == pytest.approx(expected, rel=1e-6)


def test_depth_nonpositive_prediction_fails_every_delta():
    target = torch.tensor([[[[1.0, 1.0, float("nan")]]]])
    result = depth_metrics(torch.tensor([[[[-1.0, 0.0, 1.0]]]]), target)
    assert result["delta3"] == 0.0
    assert result["abs_err"] == pytest.approx(1.5)  # the NaN target is invalid


def test_normals_known_angles_and_median():
    s, c = math.sin(math.radians(20)), math.cos(math.radians(20))
    up = [0.0, 0.0, 1.0]
    target = torch.tensor([up, up, up, up, [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    # 0° (not unit), 90°, 180°, 20° (scaled by 3), and a pixel whose target is invalid
    pred = torch.tensor([[0, 0, 2.0], [1.0, 0, 0], [0, 0, -1.0], [3 * s, 0, 3 * c], [1.0, 0, 0]])
    result = normal_metrics(pred.T.reshape(1, 3, 1, 5), target)
    assert result == pytest.approx(
        {
            "mean": (0 + 90 + 180 + 20) / 4,
            "median": (20 + 90) / 2,
            "within_11.25": 0.25,
            "within_22.5": 0.5,
            "within_30": 0.5,
        },
        abs=1e-4,
    )


def test_accuracy_with_ignored_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    target = torch.tensor([0, 0, -100, 1])
    assert accuracy(logits, target) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([0, 1, 0, 1]), target) == pytest.approx(2 / 3)


def test_delta_m_two_tasks():
    # seg mIoU 0.40 vs 0.50 (higher better): -20 %; depth abs err 0.45 vs 0.50 (lower better): +10 %
    value = delta_m(
        {"seg": 0.40, "depth": 0.45}, {"seg": 0.50, "depth": 0.50}, {"seg": True, "depth": False}
    )
    assert value == pytest.approx(-5.0)
    # extra entries in higher_is_better are ignored
    assert delta_m({"seg": 0.6}, {"seg": 0.5}, {"seg": True, "depth": False}) == pytest.approx(20.0)
    assert delta_m({"d": 0.5}, {"d": 0.5}, {"d": False}) == 0.0


@pytest.mark.parametrize(
    ("metrics", "dense", "higher", "match"),
    [
        ({}, {}, {}, "empty"),
        ({"seg": 1.0}, {"depth": 1.0}, {"seg": True, "depth": False}, "same tasks"),
        ({"seg": 1.0}, {"seg": 1.0}, {}, "no entry"),
        ({"seg": 1.0}, {"seg": 0.0}, {"seg": True}, "is 0"),
        ({"seg": float("nan")}, {"seg": 1.0}, {"seg": True}, "non-finite"),
    ],
)
def test_delta_m_errors(metrics, dense, higher, match):
    with pytest.raises(ValueError, match=match):
        delta_m(metrics, dense, higher)


def test_primary_table_and_factory():
    assert PRIMARY["segmentation"] == ("miou", True)
    assert PRIMARY["depth"] == ("abs_err", False)
    assert PRIMARY["normal"] == ("mean", False)
    assert PRIMARY["classification"] == ("accuracy", True)
    kinds = {"segmentation": SegmentationMetric, "depth": DepthMetric}
    kinds |= {"normal": NormalMetric, "classification": AccuracyMetric}
    for kind, cls in kinds.items():
        metric = metric_for(kind, num_classes=3) if kind == "segmentation" else metric_for(kind)
        assert isinstance(metric, cls)
        assert PRIMARY[kind][0] in HIGHER_IS_BETTER
    with pytest.raises(ValueError, match="choose one of"):
        metric_for("seg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_classes"):
        metric_for("segmentation")


def test_every_reported_name_has_a_direction():
    names = set(segmentation_metrics(SEG_PRED, SEG_TARGET, 4))
    names |= set(depth_metrics(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)))
    names |= set(normal_metrics(torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2)))
    names |= {"accuracy"}
    assert names == set(HIGHER_IS_BETTER)


@pytest.mark.parametrize(
    ("metric", "pred", "target", "match"),
    [
        (SegmentationMetric(4), torch.zeros(1, 5, 3, 3), SEG_TARGET, r"\(N, C=4, H, W\)"),
        (SegmentationMetric(4), torch.zeros(3, 3).long(), SEG_TARGET, r"\(N, H, W\)"),
        (SegmentationMetric(4), SEG_PRED, SEG_TARGET[0], r"labels \(N, H, W\)"),
        (DepthMetric(), torch.ones(1, 2, 2), torch.ones(1, 2, 2), r"\(N, 1, H, W\)"),
        (NormalMetric(), torch.ones(1, 1, 2, 2), torch.ones(1, 3, 2, 2), r"\(N, 3, H, W\)"),
        (AccuracyMetric(), torch.ones(2, 2, 2), torch.zeros(2).long(), r"\(N, C\)"),
    ],
)
def test_bad_shapes_name_the_expected_shape(metric, pred, target, match):
    with pytest.raises(ValueError, match=match):
        metric.update(pred, target)


def test_bad_labels_and_empty_compute():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        SegmentationMetric(4).update(torch.full((1, 3, 3), 7), SEG_TARGET)
    with pytest.raises(ValueError, match="non-integer"):
        SegmentationMetric(4).update(SEG_PRED, SEG_TARGET + 0.5)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetric(0)
    for metric in (SegmentationMetric(2), DepthMetric(), NormalMetric(), AccuracyMetric()):
        with pytest.raises(ValueError, match="accumulated"):
            metric.compute()
    metric = DepthMetric()
    metric.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))  # every pixel invalid
    with pytest.raises(ValueError, match="no valid depth pixel"):
        metric.compute()


def test_reset_forgets_what_was_accumulated():
    metric = SegmentationMetric(4)
    metric.update(torch.zeros(1, 3, 3).long(), SEG_TARGET)
    metric.reset()
    metric.update(SEG_PRED, SEG_TARGET)
    assert metric.compute()["miou"] == pytest.approx(SEG_MIOU)
    depth = DepthMetric()
    depth.update(torch.ones(1, 1, 1, 1) * 9, torch.ones(1, 1, 1, 1))
    depth.reset()
    depth.update(torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert depth.compute()["abs_err"] == 0.0


def _random_case(kind: str, n: int, generator: torch.Generator):
    h, w = 3, 4
    if kind == "segmentation":
        target = torch.randint(-1, 5, (n, h, w), generator=generator)
        return torch.randn(n, 5, h, w, generator=generator), target
    if kind == "depth":
        target = torch.rand(n, 1, h, w, generator=generator) * 10
        target[target < 2] = 0  # invalid pixels
        return target + torch.randn(n, 1, h, w, generator=generator), target
    if kind == "normal":
        target = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=generator), dim=1)
        target = target * (torch.rand(n, 1, h, w, generator=generator) > 0.2)
        return torch.randn(n, 3, h, w, generator=generator), target
    target = torch.randint(-1, 4, (n * h,), generator=generator)
    target[target == -1] = -100
    return torch.randn(n * h, 4, generator=generator), target


def _fresh(kind: str):
    return (
        metric_for(kind, num_classes=5, ignore_index=-1)
        if kind == "segmentation"
        else metric_for(kind)
    )  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(["segmentation", "depth", "normal", "classification"]),
    seed=st.integers(0, 2**31 - 1),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
)
def test_many_batches_equal_one_pass(kind, seed, sizes):
    generator = torch.Generator().manual_seed(seed)
    batches = [_random_case(kind, n, generator) for n in sizes]
    whole = _fresh(kind)
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    pieces = _fresh(kind)
    for pred, target in batches:
        pieces.update(pred, target)
    try:
        expected = whole.compute()
    except ValueError:  # nothing valid drawn: both must say so
        with pytest.raises(ValueError):
            pieces.compute()
        return
    assert pieces.compute() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_normal_statistics_match_numpy(seed, n):
    generator = torch.Generator().manual_seed(seed)
    pred, target = (
        torch.randn(1, 3, 1, n, generator=generator),
        torch.randn(1, 3, 1, n, generator=generator),
    )
    target = target / target.norm(dim=1, keepdim=True)
    p = pred[0, :, 0].T.double().numpy()
    t = target[0, :, 0].T.double().numpy()
    cos = (p * t).sum(1) / np.linalg.norm(p, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    result = normal_metrics(pred, target)
    assert result["median"] == pytest.approx(float(np.median(angles)), abs=1e-4)
    assert result["mean"] == pytest.approx(float(np.mean(angles)), abs=1e-4)
    assert result["within_30"] == pytest.approx(float(np.mean(angles < 30)))
