"""Rendering a bundle for people: text summary, HTML report, SVG charts."""
