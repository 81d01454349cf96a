"""The registry seam: an OCI distribution API client (resolve references, read manifests and blobs)."""
