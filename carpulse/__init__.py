"""The application shell: CLI, local stack, PKI, demo, benchmarks and evaluations."""
