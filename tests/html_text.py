"""What a page shows where no script runs (the ZenML dashboard's sandboxed frame): its text and its images."""

from __future__ import annotations

from html.parser import HTMLParser

HIDDEN = {"script", "style", "template", "head"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in HIDDEN:
            self._hidden += 1
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in HIDDEN:
            self._hidden = max(0, self._hidden - 1)

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.text.append(" ".join(data.split()))


def visible_text(page: str) -> str:
    """The text outside scripts, styles, templates and the head, whitespace collapsed."""
    parser = _Page()
    parser.feed(page)
    return " ".join(parser.text)


def image_sources(page: str) -> list[str]:
    """The ``src`` of every ``<img>`` (outside scripts)."""
    parser = _Page()
    parser.feed(page)
    return parser.images
