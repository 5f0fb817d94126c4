"""The prober through the daemon: what a failing platform still shows on /metrics."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trustme
from aiohttp import web
from cryptography import x509

from tests.conftest import DaemonProcess, FakePlatform, config_yaml, free_port

Start = Callable[..., DaemonProcess]


def lbl(name: str, platform: str, **extra: str) -> str:
    labels = {"check": "health", "platform": platform, **extra}
    labels["role"] = "baseline" if platform == "heroku" else "candidate"
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


async def test_expiry_of_a_certificate_that_fails_verification_is_exported(
    platforms: tuple[FakePlatform, FakePlatform], start_daemon: Start
) -> None:
    # The candidate serves a certificate from a CA the daemon does not trust: every probe
    # fails on TLS, and its expiry is exactly what an operator needs to see then.
    baseline, _ = platforms
    leaf = trustme.CA().issue_cert("api.example.test")
    expiry = x509.load_pem_x509_certificate(
        leaf.cert_chain_pems[0].bytes()
    ).not_valid_after_utc.timestamp()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        d = start_daemon(config_yaml(baseline.url, f"https://127.0.0.1:{port}"))
        await d.wait_ready()
        failures = lbl("cutover_probe_failures_total", "aws", reason="tls")
        m = await d.wait_for(lambda m: m.get(failures, 0) >= 3)
    finally:
        await runner.cleanup()
    assert m[lbl("cutover_probe_success", "aws")] == 0
    assert m[lbl("cutover_probe_success", "heroku")] == 1
    assert m[lbl("cutover_probe_tls_expiry_timestamp_seconds", "aws")] == expiry
    assert lbl("cutover_probe_tls_expiry_timestamp_seconds", "heroku") not in m  # plain http
    assert "certificate verify failed" in d.log()
