"""A structural check of the HTML report with the standard library's parser.

Used by the unit tests and by the integration test on a report of real containers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser

from otelbridge.report import fmt


@dataclass
class Page:
    title: str = ""
    badges: list[dict[str, str]] = field(default_factory=list)
    svgs: int = 0
    png_images: int = 0
    links: list[str] = field(default_factory=list)  # every src= and href= value
    tags: Counter[str] = field(default_factory=Counter)
    ids: Counter[str] = field(default_factory=Counter)
    text: str = ""
    style: str = ""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._in: list[str] = []
        self._badge: dict[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        page = self.page
        page.tags[tag] += 1
        self._in.append(tag)
        if "id" in a:
            page.ids[a["id"]] += 1
        for key in ("src", "href", "xlink:href"):
            if key in a:
                page.links.append(a[key])
        if tag == "svg":
            page.svgs += 1
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            page.png_images += 1
        if "badge" in a.get("class", "").split():
            self._badge = {**a, "text": ""}
            page.badges.append(self._badge)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        while self._in:
            if self._in.pop() == tag:
                break
        if tag == "a":
            self._badge = None

    def handle_data(self, data: str) -> None:
        current = self._in[-1] if self._in else ""
        if current == "title" and "svg" not in self._in:
            self.page.title += data
        if current == "style":
            self.page.style += data
        if self._badge is not None:
            self._badge["text"] += data + " "
        self._text.append(data)

    def close(self) -> None:
        super().close()
        self.page.text = " ".join(self._text)


def parse(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


def check_page(
    html: str,
    *,
    namespaces: Iterable[str],
    verdicts: dict[str, str] | None = None,
    budgets: Iterable[float] = (),
    min_charts: int = 0,
    trace_url: str | None = None,
) -> Page:
    """Asserts what every report must be; returns the parsed page for more checks.
    ``trace_url``: the template trace IDs were linked with; those links (clicked, never
    fetched) are the only ones that may leave the page."""
    page = parse(html)
    names = list(namespaces)
    assert page.title.startswith("otelbridge SLA report"), page.title
    assert sorted(b["data-namespace"] for b in page.badges) == sorted(names)
    severity = {"breach": 0, "insufficient": 1, "pass": 2}
    order = [(severity[b["data-verdict"]], b["data-namespace"]) for b in page.badges]
    assert order == sorted(order), "namespaces are listed worst first"
    for badge in page.badges:
        verdict = badge["data-verdict"]
        assert verdict in badge["class"].split()
        assert verdict.upper() in badge["text"]
        if verdicts is not None:
            assert verdicts[badge["data-namespace"]] == verdict
    for value in budgets:
        assert fmt.budget(value) in page.text, value
    assert page.svgs + page.png_images >= min_charts, (page.svgs, page.png_images)
    # self-contained: nothing fetched from anywhere
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    outside = trace_url.partition("{trace_id}")[0] if trace_url else None
    for link in page.links:
        if outside is not None and link.startswith(outside):
            continue
        assert link.startswith("#") or link.startswith("data:"), link
    lowered = html.lower()
    if outside is not None:
        lowered = lowered.replace(f'href="{outside.lower()}', 'href="#')
    for needle in ('src="http', "href='http", 'href="http', "src='http", "url(http", "@import"):
        assert needle not in lowered, needle
    assert not re.search(r"url\((?!#)", html), "a url() that is not a fragment"
    duplicated = [i for i, n in page.ids.items() if n > 1]
    assert not duplicated, duplicated[:5]
    return page
