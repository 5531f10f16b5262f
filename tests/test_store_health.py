"""The store's health says each episode once: one ERROR when commits start failing, one WARNING
with the count when they work again, nothing per failed message; a stop that was asked for is
NOT_SERVING without an error."""

from __future__ import annotations

import logging

import pytest

from flopwatt.collector.health import HealthView, StoreHealth


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_error_per_episode_with_the_count_at_its_end(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    seen: list[HealthView] = []
    health = StoreHealth(seen.append, mono=clock)
    with caplog.at_level(logging.INFO, logger="flopwatt.collector.health"):
        health.succeeded()  # nothing to say while serving
        for _ in range(500):  # a busy collector: every batch of every stream fails
            health.failed("database or disk is full", messages=8)
        clock.t += 12.5
        health.succeeded()
        health.succeeded()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(errors) == 1 and "database or disk is full" in errors[0].getMessage()
    assert len(warnings) == 1
    assert "12.5 s" in warnings[0].getMessage() and "4000 messages" in warnings[0].getMessage()
    assert [v.serving for v in seen] == [False, True]
    view = health.view()
    assert (view.episodes_total, view.failed_batches_total, view.failed_messages_total) == (
        1,
        500,
        4000,
    )


def test_a_requested_stop_is_not_serving_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[HealthView] = []
    health = StoreHealth(seen.append)
    with caplog.at_level(logging.INFO, logger="flopwatt.collector.health"):
        health.shutting_down()
        health.failed("store writer process ended (exit code 0)")  # the writer stopping
        health.succeeded()
    assert not health.serving and health.view().reason == "shutting down"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [v.serving for v in seen] == [False]
