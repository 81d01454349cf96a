"""The session runtime seam: a typed session spec, the pure builder of Docker Engine container arguments
from it, the Docker Engine I/O that sends them, and the instance-type table. Services use only this."""
