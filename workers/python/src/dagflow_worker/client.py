"""A client of the dagflow server's REST and WebSocket API."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, AsyncIterator, Mapping, Optional, cast
from urllib.parse import quote

import httpx
import websockets
from websockets.asyncio.client import connect as ws_connect

from .errors import DagflowError
from .types import TERMINAL_FLOW_STATUSES, FlowPage, FlowSpec, FlowView, NodeView, WatchMessage

#: Largest WebSocket message accepted: a snapshot carries every node's result.
WS_MAX_MESSAGE = 64 * 1024 * 1024


class Client:
    """Submits and follows flows on a dagflow server.

    Use it as an async context manager (or call :meth:`aclose`)::

        async with Client("http://127.0.0.1:7700") as client:
            flow_id = await client.submit({"nodes": [{"name": "a", "handler": "echo"}]})
            flow = await client.wait(flow_id, timeout=30)

    Every method raises :class:`~dagflow_worker.DagflowError` for an error answer
    (its ``status`` and ``code`` say which) and ``httpx`` errors when the server
    cannot be reached.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:7700",
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the HTTP connections."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        if response.is_success:
            return response.json() if response.content else None
        try:
            error = response.json()["error"]
            raise DagflowError(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            raise DagflowError(response.status_code, "http_error", response.text[:500]) from None

    async def submit(self, spec: FlowSpec | Mapping[str, Any], idempotency_key: Optional[str] = None) -> str:
        """Validates and starts a flow; returns its id. With ``idempotency_key``, a
        repeated submit returns the first flow's id instead of starting another. An
        invalid flow raises ``DagflowError`` 422 whose ``details["problems"]`` lists
        every problem."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        body = await self._call("POST", "/flows", json=spec, headers=headers)
        return cast(str, body["flowId"])

    async def get(self, flow_id: str) -> FlowView:
        """The flow with every node."""
        return cast(FlowView, await self._call("GET", f"/flows/{quote(flow_id, safe='')}"))

    async def node(self, flow_id: str, name: str) -> NodeView:
        """One node, with its ``input`` once its parents are done."""
        path = f"/flows/{quote(flow_id, safe='')}/nodes/{quote(name, safe='')}"
        return cast(NodeView, await self._call("GET", path))

    async def list_flows(self, status: Optional[str] = None, limit: Optional[int] = None,
                   cursor: Optional[str] = None) -> FlowPage:
        """One page of flows, newest first; pass ``nextCursor`` as ``cursor`` for the next."""
        params = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        return cast(FlowPage, await self._call("GET", "/flows", params=params))

    async def cancel(self, flow_id: str) -> FlowView:
        """Cancels a running flow: running jobs are told to stop, the rest never run."""
        return cast(FlowView, await self._call("POST", f"/flows/{quote(flow_id, safe='')}/cancel"))

    async def retry(self, flow_id: str) -> FlowView:
        """Runs the failed, skipped and cancelled nodes of an ended flow again."""
        return cast(FlowView, await self._call("POST", f"/flows/{quote(flow_id, safe='')}/retry"))

    async def signal(self, flow_id: str, node: str, payload: Any = None) -> NodeView:
        """Delivers a signal to a wait node (``wait: {"signal": ...}``) that is
        ``waiting``: ``payload`` (any JSON value; ``None`` is ``null``) becomes the
        node's result and the flow goes on. Returns the node as it is now. Raises
        ``DagflowError`` 409 when the node does not wait for a signal now (not a signal
        wait, not waiting yet, already done, or the flow ended), 404 for an unknown
        flow or node; ``ValueError``/``TypeError`` when ``payload`` is not JSON."""
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        path = f"/flows/{quote(flow_id, safe='')}/nodes/{quote(node, safe='')}/signal"
        return cast(NodeView, await self._call("POST", path, content=body,
                                                headers={"Content-Type": "application/json"}))

    async def rerun(self, flow_id: str, node: str) -> FlowView:
        """Re-runs one node and everything downstream of it with fresh attempts; the
        other nodes keep their results. Returns the flow as it is now. Raises
        ``DagflowError`` 409 when the node cannot be re-run now (it has not ended, the
        flow runs in ``failFast`` mode, or it is a map element), 404 for an unknown
        flow or node."""
        path = f"/flows/{quote(flow_id, safe='')}/nodes/{quote(node, safe='')}/rerun"
        return cast(FlowView, await self._call("POST", path))

    async def delete(self, flow_id: str) -> None:
        """Removes the flow from Redis and from the server's disk."""
        await self._call("DELETE", f"/flows/{quote(flow_id, safe='')}")

    def _ws_url(self) -> str:
        return "ws" + self.base_url[len("http"):] + "/ws"

    async def watch(self, flow_id: str) -> AsyncIterator[WatchMessage]:
        """The flow's snapshot, then every change (``flow:updated``), as they happen;
        ends after the message that shows the flow ended.

        ``seq`` goes up by one per message without gaps; after a ``lagged`` message the
        server sends a fresh snapshot. An unknown flow raises ``DagflowError`` 404.
        The connection is not resumed if it breaks (``websockets`` raises); call
        ``watch`` again, which starts with a fresh snapshot.
        """
        async with ws_connect(self._ws_url(), additional_headers=self._headers,
                              max_size=WS_MAX_MESSAGE) as ws:
            await ws.send(json.dumps({"type": "subscribe", "flowId": flow_id}))
            async for raw in ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "error":
                    # The usual cause is an unknown flow: let the REST answer say so.
                    await self.get(flow_id)
                    raise DagflowError(0, "websocket_error", str(message.get("message")))
                if kind not in ("snapshot", "flow:updated", "lagged"):
                    continue
                yield cast(WatchMessage, message)
                if kind == "snapshot" and message["flow"]["status"] in TERMINAL_FLOW_STATUSES:
                    return
                if kind == "flow:updated" and "node" not in message \
                        and message["status"] in TERMINAL_FLOW_STATUSES:
                    return

    async def wait(self, flow_id: str, timeout: Optional[float] = None) -> FlowView:
        """Waits until the flow ends (completed, failed or cancelled) and returns it;
        raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).

        Follows the flow over the WebSocket; if that connection breaks it reconnects
        (checking the flow over REST meanwhile), so a server restart is survived.
        """
        try:
            return await asyncio.wait_for(self._wait(flow_id), timeout)
        except asyncio.TimeoutError:
            # asyncio.TimeoutError is not the builtin one before Python 3.11.
            raise TimeoutError(f"flow {flow_id} did not end within {timeout} s") from None

    async def _wait(self, flow_id: str) -> FlowView:
        delay = 0.1
        while True:
            try:
                async for _ in self.watch(flow_id):
                    pass
                return await self.get(flow_id)
            except (OSError, websockets.exceptions.WebSocketException, httpx.TransportError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    flow = await self.get(flow_id)
                except httpx.TransportError:
                    continue
                if flow["status"] in TERMINAL_FLOW_STATUSES:
                    return flow
