"""TLS, mutual TLS and bearer tokens: accepted and refused, through the library and the CLI."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving.client import ClassifyError, Client
from tests.batch_cli import run_main
from tests.certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _start_mutual_tls(start_server, pki):
    """A server that takes only clients with a certificate from the test CA."""
    tls = ("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]))
    return start_server(*tls, "--tls-client-ca", str(pki["ca"]), wait=False)


def _wait_serving_tls(server, pki, client_cert=True):
    creds = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(),
        pki["client_key"].read_bytes() if client_cert else None,
        pki["client"].read_bytes() if client_cert else None,
    )
    with grpc.secure_channel(server.address, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for response in stub.Watch(health_pb2.HealthCheckRequest(), timeout=120):
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise AssertionError("the TLS server's health stream ended without SERVING")


def test_tls(start_server, pki, mnist):
    server = start_server("--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]), wait=False)
    _wait_serving_tls(server, pki, client_cert=False)
    with Client(server.address, root_certificates=pki["ca"]) as client:
        assert client.classify(mnist.x_test[0]).label == 7
    with Client(server.address, retries=0, timeout=10) as plaintext:
        with pytest.raises(ClassifyError) as info:
            plaintext.classify(mnist.x_test[0])
        assert info.value.code == "UNAVAILABLE"
    with Client(server.address, root_certificates=pki["rogue"], retries=0, timeout=10) as wrong_ca:
        with pytest.raises(ClassifyError) as info:
            wrong_ca.classify(mnist.x_test[0])
        assert info.value.code == "UNAVAILABLE"
    code, out, _ = run_main(["health", "--server", server.address, "--ca", str(pki["ca"])])
    assert code == 0 and out.strip() == "SERVING"


def test_mutual_tls(start_server, pki, mnist):
    server = _start_mutual_tls(start_server, pki)
    _wait_serving_tls(server, pki)
    with Client(
        server.address,
        root_certificates=pki["ca"],
        client_certificate=pki["client"],
        client_key=pki["client_key"],
    ) as client:
        assert client.classify(mnist.x_test[1]).label == 2
    for cert, key in ((None, None), (pki["rogue"], pki["rogue_key"])):
        with Client(
            server.address,
            root_certificates=pki["ca"],
            client_certificate=cert,
            client_key=key,
            retries=0,
            timeout=10,
        ) as refused:
            with pytest.raises(ClassifyError) as info:
                refused.classify(mnist.x_test[1])
            assert info.value.code == "UNAVAILABLE"
    code, _, err = run_main(
        [
            "--mnist-test",
            "--no-progress",
            "--server",
            server.address,
            "--ca",
            str(pki["ca"]),
            "--cert",
            str(pki["client"]),
            "--key",
            str(pki["client_key"]),
        ]
    )
    assert code == 0 and "accuracy" in err, err


def test_bearer_tokens(start_server, mnist, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nsecond-token\n")
    server = start_server("--auth-token", "first-token", "--auth-token-file", str(tokens), wait=False)
    server.wait_serving()  # health stays open without a token, for probes
    for token in ("first-token", "second-token"):
        with Client(server.address, token=token) as client:
            assert client.classify(mnist.x_test[2]).label == 1
            assert len(client.classify_batch(mnist.x_test[:10])) == 10
    for token in (None, "wrong-token"):
        with Client(server.address, token=token, retries=0) as client:
            with pytest.raises(ClassifyError) as info:
                client.classify(mnist.x_test[2])
            assert info.value.code == "UNAUTHENTICATED"
            with pytest.raises(ClassifyError) as info:
                client.classify_batch(mnist.x_test[:10])
            assert info.value.code == "UNAUTHENTICATED"
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream("/mnist.v1.Classifier/ClassifyStream")
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b""]), metadata=(("authorization", "Basic abc"),), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.metric("mnist_serving_auth_failures_total") >= 5
    code, _, err = run_main(["info", "--server", server.address, "--token", "first-token"])
    assert code == 0, err
    code, _, err = run_main(["info", "--server", server.address, "--retries", "0"])
    assert code == 1 and "UNAUTHENTICATED" in err
    # A refused call is not parsed: bytes that are no message at all still get UNAUTHENTICATED.
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/mnist.v1.Classifier/ClassifyBatch")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff not protobuf", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Tokens over plaintext are allowed, and said to be risky.
    assert "bearer tokens without TLS" in server.log_text()


def _https(url: str, pki, client_cert: bool) -> int:
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client_cert:
        context.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
    with urllib.request.urlopen(url, timeout=30, context=context) as response:
        return response.status


def test_rest_serves_the_same_tls_and_mutual_tls(start_server, pki):
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    server = _start_mutual_tls(start_server, pki)
    _wait_serving_tls(server, pki)
    url = f"https://localhost:{server.http_port}/v2/models/mnist"
    assert _https(url, pki, client_cert=True) == 200
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _https(url, pki, client_cert=False)  # no client certificate: refused in the handshake
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2", timeout=10)  # plaintext
