"""digestguard: pin every container image of a Kubernetes pod to its registry digest."""

__version__ = "0.1.0"
