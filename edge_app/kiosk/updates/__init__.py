"""The kiosk's side of sync: applies HQ's signed deltas, snapshots and model releases, sends status and enrollments."""
