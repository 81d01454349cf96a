"""Static inspection of container images: what is inside an image version, read from the registry.

Pure logic (tar parsing, layer application, rules, reports, diffs) plus one orchestrator that is
given a way to stream blobs; it never imports the registry seam, so the service wires the two.
"""
