"""``kyojo web serve`` and ``kyojo web pair-code`` (mounted lazily by :mod:`kyojo.cli`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from kyojo.contract.vocab import KyojoError

app = typer.Typer(help="The household web page on the gateway.", no_args_is_help=True, add_completion=False)

DEFAULT_CONFIG = Path(os.environ.get("KYOJO_CONFIG", "/etc/kyojo/agent.toml"))
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway config (TOML); env KYOJO_CONFIG")]

log = logging.getLogger("edge_agent.web")


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


def bind(addresses: list[str], port: int) -> list[socket.socket]:
    """Listening sockets, one per address (the page is served on exactly these)."""
    socks: list[socket.socket] = []
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        # proto named, so asyncio turns Nagle off on each accepted connection (it checks proto == IPPROTO_TCP);
        # with proto 0 every small page waited 40 ms for the client's delayed ACK between headers and body
        s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((addr, port))
        except OSError as err:
            s.close()
            for other in socks:
                other.close()
            raise KyojoError(f"cannot listen on {addr}:{port}: {err.strerror}") from err
        s.listen(128)
        s.set_inheritable(True)
        socks.append(s)
    return socks


@app.command("serve")
def serve(
    config: ConfigOpt = DEFAULT_CONFIG,
    host: Annotated[list[str] | None, typer.Option("--host", help="listen here instead of [web] (repeatable)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="instead of [web] port")] = None,
    verbose: bool = False,
) -> None:
    """Serve the household page on the home LAN (never the uplink; see [web] in the config)."""
    import uvicorn

    from edge_agent.config import load_config
    from edge_agent.web.app import create_app
    from edge_agent.web.net import listen_addresses
    from kyojo.runtime import sdnotify

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(config)
        addresses = list(host) if host else listen_addresses(cfg.web)
        the_port = cfg.web.port if port is None else port
        socks = bind(addresses, the_port)
        web_app = create_app(config)
    except KyojoError as err:
        raise _fail(err) from err
    actual = [s.getsockname()[1] for s in socks]
    scheme = "https" if cfg.web.tls else "http"
    uv = uvicorn.Config(
        web_app,
        log_level="warning",
        access_log=False,  # URLs can carry a person's id; the app logs what matters itself
        ssl_certfile=str(cfg.web.tls.cert) if cfg.web.tls else None,
        ssl_keyfile=str(cfg.web.tls.key) if cfg.web.tls else None,
        server_header=False,
        lifespan="on",
    )
    server = uvicorn.Server(uv)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        task = loop.create_task(server.serve(sockets=socks))
        # uvicorn sets a flag when its sockets are serving; it offers no event to wait on
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if server.started:
            urls = [
                f"{scheme}://{'[' + a + ']' if ':' in a else a}:{p}/" for a, p in zip(addresses, actual, strict=True)
            ]
            log.info("household page on %s", " ".join(urls))
            typer.echo(" ".join(urls), err=True)
            sdnotify.ready(f"household page on {' '.join(urls)}")
            watchdog = loop.create_task(sdnotify.watchdog_task(lambda: not server.should_exit))
        try:
            await task
        finally:
            if server.started:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
            sdnotify.stopping()

    # uvicorn installs its own signal handlers inside serve(); ours above only matter before it starts
    asyncio.run(main())


@app.command("pair-code")
def pair_code(
    config: ConfigOpt = DEFAULT_CONFIG,
    member: Annotated[bool, typer.Option("--member", help="a code for a member, not an admin")] = False,
) -> None:
    """Print a one-time pairing code for the household page (the first person to use one becomes admin)."""
    from edge_agent.config import load_config
    from edge_agent.web import auth

    try:
        cfg = load_config(config)
    except KyojoError as err:
        raise _fail(err) from err
    conn = auth.connect(cfg.gateway.data_dir)
    try:
        store = auth.AuthStore(conn, code_ttl=cfg.web.code_ttl)
        code = store.new_code(role=auth.Role.MEMBER if member else auth.Role.ADMIN)
    finally:
        conn.close()
    days = int(cfg.web.code_ttl.total_seconds() // 86_400)
    typer.echo(auth.format_code(code))
    typer.echo(
        f"one-time code, valid {days} day(s): open the household page and enter it "
        f"(ワンタイムコード、{days}日間有効: 家庭向けページで入力してください)",
        err=True,
    )


def main() -> None:
    app()
