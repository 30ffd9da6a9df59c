"""Run reports (JSON, Markdown, HTML with the accuracy-vs-latency plot of plot.py), the sections targets
declare and the warnings beside the table (sections.py), and results measured on a device."""
