"""The shared kernel: what every slaops service needs and no service owns.

The model store, the MLP and its safe loader, the feature pipeline, the Kafka adapter,
settings and errors. It imports `schemas` and nothing above it.
"""
