"""The SageMaker wire-protocol door (awsJson1_1)."""
