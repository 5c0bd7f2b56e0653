"""Server-side TLS for the gateway's listeners, from one TlsConfig."""

from __future__ import annotations

import ssl

from rampart.config import TlsConfig

__all__ = ["server_ssl_context", "tls_enabled"]


def tls_enabled(config: TlsConfig) -> bool:
    return config.cert_file is not None and config.key_file is not None


def server_ssl_context(config: TlsConfig) -> ssl.SSLContext | None:
    """None when TLS is off; otherwise a context refusing anything older than ``min_version``,
    requiring and verifying a client certificate when ``client_ca_file`` is set."""
    if not tls_enabled(config):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if config.min_version == "TLSv1.3"
                               else ssl.TLSVersion.TLSv1_2)
    context.load_cert_chain(config.cert_file, config.key_file)  # type: ignore[arg-type]
    if config.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.client_ca_file)
    return context
