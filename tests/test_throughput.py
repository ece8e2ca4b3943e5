"""Stage throughput (shared/throughput.py): the ring buffer and its fit, and /info reporting real requests."""
from __future__ import annotations

import json

import httpx
import pytest

from shared.throughput import HALF_LIFE, Throughput, summarize
from tests.helpers import jpeg_of, photo
from ui import estimate


def test_no_samples_reports_null():
    report = Throughput().report()
    assert report["seconds_per_mp"] is None and report["samples"] == 0 and report["by_params"] == []


def weighted(samples):
    """(weights, weighted seconds, weighted megapixels) as summarize weighs them: newest counts most."""
    n = len(samples)
    weights = [0.5 ** ((n - 1 - i) / HALF_LIFE) for i in range(n)]
    return (weights, sum(w * s for w, (s, _) in zip(weights, samples)),
            sum(w * mp for w, (_, mp) in zip(weights, samples)))


def test_ratio_and_fixed_cost_fit():
    # 0.5 s per request plus 2 s per megapixel: the fit recovers both whatever the weights
    samples = [(0.5 + 2 * mp, mp) for mp in (0.1, 0.4, 1.0, 2.0)]
    report = summarize(samples)
    _, seconds, megapixels = weighted(samples)
    assert report["samples"] == 4
    assert report["seconds_per_mp"] == pytest.approx(seconds / megapixels)
    assert report["seconds_per_request"] == pytest.approx(0.5)
    assert report["seconds_per_mp_fit"] == pytest.approx(2.0)


def test_similar_sizes_count_all_time_per_megapixel():
    samples = [(1.0, 0.5), (1.2, 0.5), (2.0, 1.2)]
    report = summarize(samples)
    _, seconds, megapixels = weighted(samples)
    assert report["seconds_per_request"] == 0.0 and report["seconds_per_mp_fit"] == pytest.approx(seconds / megapixels)


def test_the_fixed_cost_stays_below_the_fastest_request():
    # a big photo that happened to be fast: least squares would give a negative slope
    samples = [(1.0, 0.1), (0.8, 1.0)]
    report = summarize(samples)
    weights, seconds, megapixels = weighted(samples)
    assert report["seconds_per_request"] == pytest.approx(0.8)
    assert report["seconds_per_mp_fit"] == pytest.approx((seconds - sum(weights) * 0.8) / megapixels)


def test_recent_requests_count_more():
    # the machine got 4x faster (another job finished): the estimate follows within a few requests
    old, new = [(4.0, 1.0)] * 24, [(1.0, 1.0)] * 8
    report = summarize(old + new)
    assert 1.0 < report["seconds_per_mp"] < 2.0
    assert summarize(new + old)["seconds_per_mp"] > 3.0


def test_ring_buffer_and_parameter_sets_are_bounded():
    throughput = Throughput(size=4, param_sets=2)
    for i in range(10):
        throughput.record(1.0, 1.0, {"scale": i % 3})
    throughput.record(-1.0, 1.0, {})      # nonsense is ignored
    report = throughput.report()
    assert report["samples"] == 4
    assert [e["params"] for e in report["by_params"]] == [{"scale": 2}, {"scale": 0}]
    json.dumps(report)


def test_estimate_prefers_the_matching_parameter_set():
    throughput = Throughput()
    throughput.record(10.0, 1.0, {"scale": 4.0})
    throughput.record(1.0, 1.0, {"enhance": True})
    report = throughput.report()
    assert estimate.step_seconds(report, {"scale": 4.0}, 0.5) == pytest.approx(5.0)
    assert estimate.step_seconds(report, {"enhance": True}, 2.0) == pytest.approx(2.0)
    _, seconds, megapixels = weighted([(10.0, 1.0), (1.0, 1.0)])
    assert estimate.step_seconds(report, {"scale": 2.0}, 1.0) == pytest.approx(seconds / megapixels)   # overall
    assert estimate.step_seconds(Throughput().report(), {}, 1.0) is None


def test_info_reports_recent_process_requests(stack):
    url = stack.url("postprocess")
    params = {"sharpen_amount": 0.7, "sharpen_radius": 1.3}
    image = jpeg_of(photo("astronaut")[::2, ::2])       # 256 x 256
    # the process's first (cold) request is never counted; this one may be it
    assert httpx.post(url + "/process", files={"image": ("a.jpg", image)}, timeout=60).status_code == 200
    before = httpx.get(url + "/info", timeout=30).json()["throughput"]
    response = httpx.post(url + "/process", files={"image": ("a.jpg", image)}, data={"params": json.dumps(params)},
                          timeout=60)
    assert response.status_code == 200
    after = httpx.get(url + "/info", timeout=30).json()["throughput"]
    assert after["samples"] == min(before["samples"] + 1, 32)
    assert after["seconds_per_mp"] > 0
    entry = next(e for e in after["by_params"] if e["params"] == params)
    stage_seconds = float(response.headers["x-process-time-ms"]) / 1000
    # one request: its seconds / its megapixels, measured around the same work as the stage's own timer
    assert entry["seconds_per_mp"] * 0.065536 == pytest.approx(stage_seconds, rel=0.5, abs=0.05)
    bad = httpx.post(url + "/process", files={"image": ("a.jpg", b"not an image")}, timeout=30)
    assert 400 <= bad.status_code < 500
    assert httpx.get(url + "/info", timeout=30).json()["throughput"]["samples"] == after["samples"]


def test_decisions_are_recorded_apart_and_priced_apart():
    throughput = Throughput(param_sets=2)
    for _ in range(3):
        throughput.record(0.05, 1.0, {"mode": "auto"}, "color", "sharp")
        throughput.record(40.0, 1.0, {"mode": "auto"}, "color", "motion")
    report = throughput.report()
    assert report["by_decision"]["sharp"]["samples"] == 3
    params = {"mode": "auto"}
    assert estimate.step_seconds(report, params, 2.0, "color", "sharp") == pytest.approx(0.1)
    assert estimate.step_seconds(report, params, 2.0, "color", "motion") == pytest.approx(80.0)
    # no decision known (or none recorded for it): the mixed record, as before
    _, seconds, megapixels = weighted([(0.05, 1.0), (40.0, 1.0)] * 3)
    mixed = 2.0 * seconds / megapixels
    assert estimate.step_seconds(report, params, 2.0, "color") == pytest.approx(mixed)
    assert estimate.step_seconds(report, params, 2.0, "color", "defocus") == pytest.approx(mixed)
    for name in ("a", "b", "c"):   # bounded like the parameter sets
        throughput.record(1.0, 1.0, None, None, name)
    assert list(throughput.report()["by_decision"]) == ["b", "c"]
