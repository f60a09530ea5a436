"""SIP message text as a phone writes it: headers read, responses written, the digest answered.

Light on purpose (no aiortc, no pytest): the e2e tests' browser (tests/browser_agent.py) and the
lean load client (loadtest/webrtc_load_client.py, a hundred agents in one process) share it.
"""

from __future__ import annotations

import hashlib
import re


def header(text: str, name: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in text.split("\r\n")
                 if line.lower().startswith(name.lower() + ":")), "")


def header_values(text: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in text.split("\r\n") if line.lower().startswith(name.lower() + ":")]


def digest_authorization(challenge: str, *, username: str, password: str, method: str, uri: str,
                         algorithm: str = "SHA-256", cnonce: str = "c0ffee") -> str:
    """The Authorization value answering one WWW-Authenticate `challenge` (RFC 7616, qop=auth, nc 1)."""
    realm = re.search(r'realm="([^"]+)"', challenge)
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    if realm is None or nonce is None:
        raise ValueError(f"a challenge without realm or nonce: {challenge[:200]!r}")
    h = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if algorithm == "SHA-256" else (
        lambda s: hashlib.md5(s.encode()).hexdigest())  # noqa: S324 — the RFC's MD5, for old phones
    ha1, ha2 = h(f"{username}:{realm.group(1)}:{password}"), h(f"{method}:{uri}")
    response = h(f"{ha1}:{nonce.group(1)}:00000001:{cnonce}:auth:{ha2}")
    return (f'Digest username="{username}", realm="{realm.group(1)}", nonce="{nonce.group(1)}", uri="{uri}", '
            f'algorithm={algorithm}, qop=auth, nc=00000001, cnonce="{cnonce}", response="{response}"')


def reply(request: str, status: str, *, to_tag: str | None, contact: str, body: str = "") -> str:
    """A response to `request` as a phone writes it: its Via, From, Call-ID and CSeq, our To tag.

    `to_tag` None: the request is within the dialog (a BYE), its To already carries our tag.
    """
    # RFC 3261 §12.1.1: a UAS copies Record-Route into its answer (a proxy's route set, Kamailio's)
    echoed = "\r\n".join(line for line in request.split("\r\n\r\n")[0].split("\r\n")
                         if line.lower().split(":")[0] in ("via", "record-route", "from", "call-id", "cseq"))
    typed = "Content-Type: application/sdp\r\n" if body else ""
    to = header(request, "To") + (f";tag={to_tag}" if to_tag is not None else "")
    return (f"SIP/2.0 {status}\r\n{echoed}\r\nTo: {to}\r\nContact: <{contact}>\r\n"
            f"{typed}Content-Length: {len(body.encode())}\r\n\r\n{body}")
