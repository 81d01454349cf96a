"""The builder seam: turn a build context into a pushed container image.

- `context`: pure helpers for build contexts: `.dockerignore` matching, packing a directory into a tar, and
  checking/sanitising an uploaded tar (no absolute paths, no `..`, no links that leave the context, size
  limits) without ever extracting it.
- `logstore`: the build log on disk (JSON lines, size-capped), read back as events or as plain text.
- `base`: what a backend implements (`Builder`) and the requests and errors it deals in.
- `docker`: the Docker Engine backend (`/build` and `/images/{name}/push` through aiodocker).

Backends are chosen in `byoi.app`; services import only `base`, `context` and `logstore`.
"""
