"""Fault injection for real clusters: link proxies, the nemesis, the checker."""
