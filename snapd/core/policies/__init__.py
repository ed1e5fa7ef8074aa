"""Snapshot policies as pure logic: specs, schedules, retention and the plan.

Nothing here touches the store, a backend or the event loop; times are epoch seconds (UTC)."""
