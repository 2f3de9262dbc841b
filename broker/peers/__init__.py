"""Simulated external systems: capture endpoints and hospital senders for the demo, tests and benchmarks."""
