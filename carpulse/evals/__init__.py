"""Evaluations of the models on public benchmarks (``carpulse eval NAME``)."""
