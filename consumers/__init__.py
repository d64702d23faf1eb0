"""Kafka consumers of Strandline's events (tail today; drift, retrain and alerts next)."""
