"""The authentication seam: request signatures and secrets at rest."""
