"""Real data sets available offline (Debian / PyPI packages), with caching and clear errors."""
