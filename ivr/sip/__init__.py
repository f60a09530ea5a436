"""Our own SIP stack below the call flow, sans-IO at its core.

`transactions` matches requests to responses and runs RFC 3261 §17's
retransmission timers (with RFC 6026's Accepted state); `dialogs` keeps what
RFC 3261 §12 needs to build and check in-dialog requests. Neither reads a clock
nor touches a socket: `endpoint` (with `stream` for TCP and TLS) feeds them
messages and `now`, and sends the datagrams they hand back. `calls` holds a
call's own SIP behaviour, one the IVR answers and one it places, and sends
through the endpoint.
"""
