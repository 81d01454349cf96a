"""The image's final file tree: layer indexes applied in order, as overlayfs would stack them.

Within one layer, whiteouts and opaque markers act on the layers below only, so they are applied
before the layer's own entries (their order inside the tar does not matter, as the OCI spec says).
A non-directory replacing a directory hides everything below it. Hard links must point at something
that exists by then; symlinks are resolved inside the image root with a hop limit, so a loop is
reported rather than followed forever.
"""

from __future__ import annotations

import posixpath

from byoi.inspect.errors import InspectionError, SymlinkLoop
from byoi.inspect.layer import LayerIndex

MAX_HOPS = 40  # as Linux's MAXSYMLINKS

# A node: (kind, mode, uid, gid, size, link).
Node = tuple[str, int, int, int, int, str]
_DIR: Node = ("d", 0o755, 0, 0, 0, "")


class Tree:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"": _DIR}
        self.children: dict[str, set[str]] = {"": set()}
        self.contents: dict[str, bytes] = {}

    # -- building ------------------------------------------------------------------------------

    def apply(self, layer: LayerIndex, position: int) -> None:
        for path, kind, *_ in layer.entries:
            if kind == "w":
                self._remove(path)
            elif kind == "o":
                for child in list(self.children.get(path, ())):
                    self._remove(posixpath.join(path, child) if path else child)
        for path, kind, mode, uid, gid, size, link in layer.entries:
            if kind in ("w", "o"):
                continue
            if kind == "h":
                target = self.nodes.get(link)
                if target is None:
                    raise InspectionError(
                        f"layer {position} has a hard link {path!r} to {link!r}, which does not exist"
                    )
                if target[0] == "d":
                    raise InspectionError(f"layer {position} has a hard link {path!r} to the directory {link!r}")
                self._put(path, target)
                if link in self.contents:
                    self.contents[path] = self.contents[link]
                continue
            self._put(path, (kind, mode, uid, gid, size, link))
            if kind == "f" and path in layer.contents:
                self.contents[path] = layer.contents[path]

    def _put(self, path: str, node: Node) -> None:
        parent, name = posixpath.split(path)
        self._ensure_dir(parent)
        old = self.nodes.get(path)
        if old is not None and (old[0] != "d" or node[0] != "d"):
            self._remove(path)
        self.nodes[path] = node
        self.children[parent].add(name)
        if node[0] == "d":
            self.children.setdefault(path, set())
        else:
            self.contents.pop(path, None)

    def _ensure_dir(self, path: str) -> None:
        missing = []
        while True:  # the root is always a directory, so this stops
            node = self.nodes.get(path)
            if node is not None and node[0] == "d":
                break
            missing.append(path)
            path = posixpath.dirname(path)
        for p in reversed(missing):
            # A lower non-directory where an upper layer needs a directory: the directory wins.
            self._remove(p)
            parent, name = posixpath.split(p)
            self.nodes[p] = _DIR
            self.children[p] = set()
            self.children[parent].add(name)

    def _remove(self, path: str) -> None:
        if path not in self.nodes or not path:
            return
        stack = [path]
        while stack:
            p = stack.pop()
            self.nodes.pop(p, None)
            self.contents.pop(p, None)
            for child in self.children.pop(p, ()):
                stack.append(f"{p}/{child}")
        parent, name = posixpath.split(path)
        self.children.get(parent, set()).discard(name)

    # -- reading -------------------------------------------------------------------------------

    def resolve(self, path: str, follow_last: bool = True) -> str | None:
        """The canonical path `path` names (absolute or root-relative), following symlinks inside the
        image; None when something on the way does not exist. Raises SymlinkLoop."""
        pending = [p for p in path.split("/") if p not in ("", ".")]
        pending.reverse()
        current: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if current:
                    current.pop()
                continue
            candidate = "/".join([*current, part])
            node = self.nodes.get(candidate)
            if node is None:
                return None
            if node[0] == "l" and (pending or follow_last):
                hops += 1
                if hops > MAX_HOPS:
                    raise SymlinkLoop(f"symlink loop while resolving /{path.lstrip('/')} (at /{candidate})")
                target = node[5]
                if target.startswith("/"):
                    current = []
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if pending and node[0] != "d":
                return None
            current.append(part)
        return "/".join(current)

    def node(self, path: str) -> Node | None:
        resolved = self.resolve(path)
        return None if resolved is None else self.nodes.get(resolved)

    def read(self, path: str) -> bytes | None:
        resolved = self.resolve(path)
        return None if resolved is None else self.contents.get(resolved)

    def listdir(self, path: str) -> list[str]:
        resolved = self.resolve(path)
        return sorted(self.children.get(resolved, ())) if resolved is not None else []

    def is_dir(self, path: str) -> bool:
        node = self.node(path)
        return node is not None and node[0] == "d"

    def is_file(self, path: str) -> bool:
        node = self.node(path)
        return node is not None and node[0] == "f"
