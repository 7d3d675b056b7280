"""llm.transport: the lean HTTP/1.1 transport under the openai client, against real local servers.

Framing, broken replies, timeouts, TLS and the openai client's HTTP client, against real local
servers (tests/local_http.py). Where httpx's default transport is the reference, the same
requests go through both and must agree.
"""

from __future__ import annotations

import datetime
import gzip
import io
import re
import socket
import ssl
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memproc.llm import transport
from memproc.llm.gated_http import http_client
from memproc.llm.transport import LeanTransport, httpx
from tests.local_http import Server, answering, lean_client, ok, read_request, sdk, serve

pytestmark = pytest.mark.timeout(60)

__all__ = ["serve"]  # a fixture: imported to be used, not called

# --- framing: the same bodies as httpx's default transport ----------------------------------------

REPLIES = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "until close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
    "interim 100": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi",
    "no content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "bare line feeds": b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Long: lf\n\nok",
    "folded header": b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 1\r\n\r\nz",
    "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b"
    % (len(gzip.compress(b"unzipped", mtime=0)), gzip.compress(b"unzipped", mtime=0)),
}


@pytest.mark.parametrize("kind", sorted(REPLIES))
def test_replies_read_as_the_default_transport_reads_them(serve: Callable[..., Server], kind: str) -> None:
    seen = []
    for client in (httpx.Client(), lean_client()):
        server = serve(answering(REPLIES[kind], close_after=True))
        with client:
            response = client.get(server.url())
            seen.append((response.status_code, response.content, response.headers.raw))
    assert seen[0] == seen[1]


def test_a_head_reply_has_no_body_and_keeps_the_connection(serve: Callable[..., Server]) -> None:
    server = serve(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", ok(b"next")))
    with lean_client() as client:
        assert client.head(server.url()).content == b""
        assert client.get(server.url()).content == b"next"
    assert server.connections == 1


def test_request_bodies_of_unknown_length_go_chunked(serve: Callable[..., Server]) -> None:
    got: list[bytes] = []

    def handler(sock: socket.socket, server: Server) -> None:
        reader = sock.makefile("rb")
        reader.readline()
        while reader.readline() != b"\r\n":
            pass
        while (size := int(reader.readline().strip(), 16)) != 0:
            got.append(reader.read(size))
            reader.readline()
        reader.readline()
        sock.sendall(ok())

    server = serve(handler)
    with lean_client() as client:
        assert client.post(server.url(), content=iter([b"ab", b"", b"cd"])).json() == {"ok": True}
    assert got == [b"ab", b"cd"]


# --- broken replies and refused requests ---------------------------------------------------------

BROKEN = {
    "no reply": b"",
    "not http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "short body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad header": b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_replies_are_remote_protocol_errors_and_sdk_connection_errors(
    serve: Callable[..., Server], kind: str
) -> None:
    server = serve(answering(BROKEN[kind], close_after=True))
    with lean_client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url())
    with pytest.raises(openai.APIConnectionError) as info:
        sdk(server).post("/x", cast_to=httpx.Response)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


def test_an_answer_before_the_whole_request_was_read_is_the_response(serve: Callable[..., Server]) -> None:
    def early(sock: socket.socket, server: Server) -> None:  # answers after the head, reads no body
        reader = sock.makefile("rb")
        while reader.readline() not in (b"\r\n", b""):
            pass
        sock.sendall(ok(b"too big", b"Connection: close").replace(b"200 OK", b"413 Payload Too Large"))
        reader.close()

    seen = []
    for client in (httpx.Client(), lean_client()):
        server = serve(early)
        with client:
            response = client.post(server.url(), content=b"x" * (32 * 1024 * 1024))
            seen.append((response.status_code, response.content))
    assert seen == [(413, b"too big")] * 2


def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with lean_client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([("X-Evil", "a\r\nInjected: yes")], "value"),
        ([("X-Evil", "a\nb")], "value"),
        ([("X-Evil", "a\rb")], "value"),
        ([("X-Evil", "a\x00")], "value"),
        ([("X: y", "z")], "name: b'X: y'"),  # as a line, "X" and a value "y: z"
        ([("X-Evil", "a\nb"), ("Bad\r\nName", "z")], "name: b'Bad\\r\\nName'"),
        ([("X-A", "1"), ("", "z")], "name: b''"),
    ],
)
def test_an_illegal_header_is_refused_before_sending(
    serve: Callable[..., Server], headers: list[tuple[str, str]], refused: str
) -> None:
    server = serve(answering(ok()))
    with (
        lean_client() as client,
        pytest.raises(httpx.LocalProtocolError, match="illegal (header )?" + re.escape(refused)),
    ):
        client.get(server.url(), headers=headers)
    assert server.connections == 0


# --- timeouts ------------------------------------------------------------------------------------


def silent(sock: socket.socket, server: Server) -> None:
    """Accept, read nothing, answer nothing, until the test ends."""
    server.done.wait(30)


def reads_then_silent(sock: socket.socket, server: Server) -> None:
    read_request(sock.makefile("rb"))
    server.done.wait(30)


def test_read_timeout_and_the_sdks_timeout_error(serve: Callable[..., Server]) -> None:
    server = serve(reads_then_silent)
    with lean_client() as client, pytest.raises(httpx.ReadTimeout):
        client.post(server.url(), content=b"{}", timeout=httpx.Timeout(5.0, read=0.1))
    with pytest.raises(openai.APITimeoutError):
        sdk(server, timeout=httpx.Timeout(5.0, read=0.1)).post("/x", cast_to=httpx.Response, body={})


def test_write_timeout_when_the_server_reads_nothing(serve: Callable[..., Server]) -> None:
    server = serve(silent)
    body = b"x" * (64 * 1024 * 1024)  # far beyond both sockets' buffers
    with lean_client() as client, pytest.raises(httpx.WriteTimeout):
        client.post(server.url(), content=body, timeout=httpx.Timeout(5.0, write=0.1))


def test_connect_timeout_covers_the_tls_handshake(serve: Callable[..., Server]) -> None:
    server = serve(silent)  # plain TCP: the client's TLS handshake never gets an answer
    with lean_client() as client, pytest.raises(httpx.ConnectTimeout):
        client.get(f"https://127.0.0.1:{server.port}/", timeout=httpx.Timeout(5.0, connect=0.1))


# --- TLS -----------------------------------------------------------------------------------------


def certificates(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (its PEM file) and a server context with a certificate it signed for ``localhost``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memproc test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def test_tls_verifies_the_certificate_and_its_hostname(
    serve: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file, context = certificates(tmp_path)
    server = serve(answering(ok(b"secure")), tls=context)
    with lean_client() as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(server.url(host="localhost"))  # an unknown CA
    with pytest.raises(openai.APIConnectionError):
        sdk(server).post("/x", cast_to=httpx.Response)

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # trusted as the default client trusts it
    with lean_client() as client:
        assert client.get(server.url(host="localhost")).content == b"secure"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(server.url(host="127.0.0.1"))  # not the name on the certificate


# --- the openai client's HTTP client -------------------------------------------------------------


def test_http_client_is_lean_without_a_proxy_and_honours_one_from_the_environment(
    serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with http_client() as client:
        assert isinstance(client._transport, LeanTransport)

    targets: list[bytes] = []

    def proxy(sock: socket.socket, server: Server) -> None:
        request = read_request(sock.makefile("rb"))
        assert request is not None
        targets.append(request[0].split()[1])
        sock.sendall(ok(b"via the proxy"))

    server = serve(proxy)
    monkeypatch.setenv("HTTP_PROXY", server.url(""))
    reply = openai.OpenAI(
        api_key="k", base_url="http://llm.invalid/v1", max_retries=0, http_client=http_client()
    ).post("/chat/completions", cast_to=httpx.Response, body={})
    assert reply.content == b"via the proxy"
    assert targets == [b"http://llm.invalid/v1/chat/completions"]


# --- the head of a reply: two regular expressions for the usual head, line by line otherwise ------


def former_read_head(reader: Any) -> tuple[int, int, bytes, list[tuple[bytes, bytes]]]:
    """transport._read_head as it was before the regular expressions: the reference."""
    while True:
        buffered = reader.peek(1)
        if not buffered:
            raise transport._remote("Server disconnected without sending a response.", None)
        end = buffered.find(b"\r\n\r\n")
        if 0 <= end < transport.MAX_HEAD and buffered.count(b"\n", 0, end) == buffered.count(b"\r\n", 0, end):
            lines = reader.read(end + 4).split(b"\r\n")[:-2]
        else:
            lines = transport._head_lines(reader, None)
        status_line = transport._STATUS.fullmatch(lines[0])
        if status_line is None:
            raise transport._remote(f"not an HTTP/1.x status line: {lines[0][:100]!r}", None)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + b" " + line.strip(b" \t"))
                continue
            name, colon, value = line.partition(b":")
            if not colon or not transport._TOKEN.fullmatch(name) or transport._BAD_VALUE.search(value):
                raise transport._remote(f"a malformed response header: {line[:100]!r}", None)
            headers.append((name, value.strip(b" \t")))
        status = int(status_line.group(2))
        if 100 <= status < 200 and status != 101:
            continue
        return int(status_line.group(1)), status, status_line.group(3) or b"", headers


TOKEN = st.text("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits, min_size=1, max_size=8)
NAME = TOKEN.map(str.encode) | st.sampled_from([b"Content-Length", b"X-A", b"bad name", b""])
VALUE = st.binary(max_size=12) | st.sampled_from([b"", b" ", b"\t", b" a b ", b"\tv\t", b"\xc3\xa9", b"\x7f"])
LINE = st.builds(lambda name, value: name + b":" + value, NAME, VALUE) | st.sampled_from(
    [b" folded", b"\tfolded ", b"no colon", b""]
)
FINAL = [b"HTTP/1.1 200 OK", b"HTTP/1.0 404 Not Found", b"HTTP/1.1 204", b"HTTP/1.1 500 ", b"HTTP/1.1 101 Up"]
LINE_END = st.sampled_from([b"\r\n"] * 6 + [b"\n"])
STATUS_LINE = st.sampled_from([*FINAL, b"HTTP/1.1 100 Continue", b"HTTP/2 200 OK", b"HTTP/1.1 200 OK\n"])


@settings(max_examples=1500, deadline=None)
@given(STATUS_LINE, st.lists(st.tuples(LINE, LINE_END), max_size=6), st.binary(max_size=40))
def test_a_head_parses_as_the_former_reading_parsed_it(
    status_line: bytes, lines: list[tuple[bytes, bytes]], rest: bytes
) -> None:
    head = status_line + b"\r\n" + b"".join(line + end for line, end in lines) + b"\r\n"

    def parsed(read: Callable[[Any], Any]) -> Any:
        reader = io.BufferedReader(io.BytesIO(head + rest))
        try:
            return read(reader), reader.read()
        except httpx.RemoteProtocolError as exc:
            return str(exc)

    got = parsed(lambda reader: transport._read_head(reader, None))
    expected = parsed(former_read_head)
    if isinstance(got, str):
        assert got == expected
    else:
        (minor, status, reason, fields), left = got
        assert ((minor, status, reason, [(name, value) for name, _, value in fields]), left) == expected
        assert all(lower == name.lower() for name, lower, _ in fields)
        crlf_lines = all(end == b"\r\n" and not re.search(rb"^[ \t]|[\r\n]", line) for line, end in lines)
        assert transport._HEAD.match(head) or not (status_line in FINAL and crlf_lines)  # the usual head


def test_headers_are_httpxs_headers_of_the_same_fields() -> None:
    pairs = [(b"Content-Type", b"application/json"), (b"X-Twice", b"1"), (b"x-twice", b"caf\xc3\xa9")]
    built = transport._headers([(name, name.lower(), value) for name, value in pairs])
    reference = httpx.Headers(pairs)
    assert built._list == reference._list
    assert built.multi_items() == reference.multi_items() and built.encoding == reference.encoding
    assert httpx.Response(200, headers=built).headers.raw == pairs
