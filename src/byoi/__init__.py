"""byoi: self-hosted, SageMaker-compatible "bring your own image" for RStudio."""

__version__ = "0.1.0"
