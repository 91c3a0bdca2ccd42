"""`refresh` says why a run failed, not only that it did."""

import dagster as dg

from altgrad_pipeline.refresh import _echo_step_failures


def test_failed_steps_are_named_with_the_user_error():
    @dg.asset
    def broken_asset():
        raise ValueError("the disk is full\nsecond line")

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken_asset], instance=instance, raise_on_error=False)
        lines: list[str] = []
        _echo_step_failures(instance, result.run_id, lines.append)
    assert lines == ["    broken_asset: ValueError: the disk is full"]
