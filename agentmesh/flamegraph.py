"""Folded stacks ('a;b;c 12' lines) drawn as a flame graph: one self-contained SVG, roots at the
bottom, each frame as wide as the share of samples it was on the stack for; hover a frame for its
name, samples and share. The folded text itself is what speedscope and flamegraph.pl read."""

from __future__ import annotations

import html
import zlib
from dataclasses import dataclass, field

WIDTH = 1200.0
ROW = 17.0
FONT = 11.0
CHAR_W = 6.2  # the width of one character of the font, near enough, to fit labels in frames
MIN_W = 0.3  # narrower frames are not drawn


@dataclass
class Node:
    name: str
    count: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def tree_of(stacks: list[tuple[str, int]]) -> Node:
    root = Node("all")
    for stack, count in stacks:
        root.count += count
        node = root
        for name in stack.split(";"):
            node = node.children.setdefault(name, Node(name))
            node.count += count
    return root


def _depth(node: Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    # Warm colours, stable per frame name, so the same function looks the same in every graph.
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 180 + 40},{(h >> 16) % 55})"


def render(stacks: list[tuple[str, int]], title: str) -> str:
    root = tree_of(stacks)
    depth = _depth(root)
    height = (depth + 2) * ROW
    total = max(root.count, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:g}" height="{height:g}" '
        f'font-family="monospace" font-size="{FONT:g}">',
        f'<text x="{WIDTH / 2:g}" y="{ROW - 4:g}" text-anchor="middle">{html.escape(title)}</text>',
    ]

    def draw(node: Node, x: float, level: int) -> None:
        width = node.count / total * WIDTH
        if width < MIN_W:
            return
        y = height - (level + 1) * ROW
        share = 100.0 * node.count / total
        label = (
            node.name
            if len(node.name) * CHAR_W < width - 4
            else node.name[: max(0, int((width - 4) / CHAR_W) - 2)]
        )
        label = label + ".." if label and label != node.name else label
        parts.append(
            f"<g><title>{html.escape(node.name)} ({node.count} samples, {share:.1f}%)</title>"
            f'<rect x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="{ROW - 1:g}" '
            f'fill="{_colour(node.name)}" rx="1"/>'
            + (f'<text x="{x + 2:.2f}" y="{y + ROW - 5:.2f}">{html.escape(label)}</text>' if label else "")
            + "</g>"
        )
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, child_x, level + 1)
            child_x += child.count / total * WIDTH

    draw(root, 0.0, 0)
    parts.append("</svg>")
    return "\n".join(parts)


def folded_text(stacks: list[tuple[str, int]]) -> str:
    return "".join(f"{stack} {count}\n" for stack, count in stacks)
