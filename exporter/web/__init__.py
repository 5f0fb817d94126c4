"""HTTP: the aiohttp app (/metrics, the page, the APIs) behind the guard that bounds its clients."""
