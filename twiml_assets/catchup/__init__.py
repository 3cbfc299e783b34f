"""Catching up on the archive without holes: failure kinds, the failure ledger, each
episode's status, and the sensor that records why a run failed."""
