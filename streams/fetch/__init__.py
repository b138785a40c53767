"""Fetching images from hostile URLs: SSRF guard, size, pixel and time limits, decoding at working size.

Import from the modules themselves (``streams.fetch.fetcher``, ``streams.fetch.errors`` ...):
each name has one home.
"""
