"""Run reports (JSON, Markdown, HTML with the accuracy-vs-latency plot), the sections targets
declare, and results measured on a device."""
