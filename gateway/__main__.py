"""``python -m gateway``: the gateway on HOST:PORT (default 127.0.0.1:8000)."""
import uvicorn

from shared.contract import DEFAULT_PORTS

from .settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    uvicorn.run("gateway.app:app", host=settings.host, port=settings.port or DEFAULT_PORTS["gateway"],
                log_level=settings.log_level)
