"""A small typed wrapper over the generated `Gati` client: connect with a timeout, retry with
exponential back-off on `Overloaded`/`Unavailable` and on a broken connection, convert inputs."""
import os
import random
import ssl
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TSSLSocket, TTransport

from .gen.gati import Gati
from .gen.gati.ttypes import (
    AnswerSource,
    DeadlineExceeded,
    InferRequest,
    Input,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    TensorData,
    Unavailable,
)

# Errors worth another try: the server asked to come back later, or the connection broke.
RETRIABLE = (Overloaded, Unavailable, TTransport.TTransportException, ConnectionError)


class GatiError(Exception):
    """A request that failed for good: `kind` is the IDL exception's name, `message` its text."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class Answer:
    """One answer: the class, its probability, where it came from and how long each part took."""

    request_id: str
    class_index: int
    class_name: str
    confidence: float
    top_k: List[tuple]
    source_name: str  # "CACHE" or "BASE"
    cache_layer: Optional[str]
    timing_ms: dict

    @staticmethod
    def of(r) -> "Answer":
        t = r.timing
        return Answer(
            request_id=r.request_id,
            class_index=r.class_index,
            class_name=r.class_name,
            confidence=r.confidence,
            top_k=[(s.class_index, s.class_name, s.confidence) for s in r.top_k],
            source_name=AnswerSource._VALUES_TO_NAMES[r.source],
            cache_layer=r.cache_layer,
            timing_ms={k: getattr(t, k) for k in ("total_ms", "queue_ms", "preprocess_ms", "base_ms", "cache_ms")},
        )


@dataclass
class Outcome:
    """One item of `infer_each`: an answer, or the error that item alone got."""

    answer: Optional[Answer]
    error: Optional[GatiError]


ImageLike = Union[str, os.PathLike, bytes, "numpy.ndarray"]  # noqa: F821


def _error(e: Exception) -> GatiError:
    return GatiError(type(e).__name__, getattr(e, "message", str(e)))


def _input(image: ImageLike) -> Input:
    """A path or encoded bytes travel as an image; a numpy array as a raw normalised float32 tensor
    ([C, H, W] or [1, C, H, W]; see `normalise`)."""
    if isinstance(image, (bytes, bytearray)):
        return Input(image=bytes(image))
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return Input(image=f.read())
    import numpy as np

    a = np.ascontiguousarray(image, dtype="<f4")
    return Input(tensor=TensorData(shape=list(a.shape), data=a.tobytes(), dtype="float32"))


def normalise(pixels, info) -> "numpy.ndarray":  # noqa: F821
    """uint8 pixels [H, W, 3] (RGB) to the float32 [3, H, W] tensor the model expects, exactly as the
    server does for an image, from the `ModelInfo` of `Client.models()`."""
    import numpy as np

    x = np.asarray(pixels, dtype=np.float32) / 255.0
    x = (x - np.asarray(info.mean, dtype=np.float32)) / np.asarray(info.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


class Client:
    """A connection to a gati frontend (binary protocol, framed transport).

    `timeout_s` bounds connecting and every call; `retries` is how many more tries an `Overloaded`,
    `Unavailable` or broken connection gets, after `backoff_s`, doubling, with jitter. A frontend
    serving TLS (`"public": "tls"` or `"mutual"` in its cluster config): `tls_ca` is the CA
    certificate (PEM) to verify it with; `tls_cert` and `tls_key` the client certificate a mutual-TLS
    frontend requires.
    """

    def __init__(self, endpoint: str = "127.0.0.1:7000", timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.05, tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None):
        host, port = endpoint.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._tls = None
        if tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            if tls_cert is not None:
                ctx.load_cert_chain(str(tls_cert), None if tls_key is None else str(tls_key))
            self._tls = ctx
        self._transport = None
        self._client = None
        self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._transport is not None:
            self._transport.close()
        self._transport = self._client = None

    def _connect(self):
        if self._client is None:
            if self._tls is None:
                sock = TSocket.TSocket(self.host, self.port)
            else:
                sock = TSSLSocket.TSSLSocket(self.host, self.port, ssl_context=self._tls, server_hostname=self.host)
            sock.setTimeout(self.timeout_s * 1000)
            self._transport = TTransport.TFramedTransport(sock)
            self._client = Gati.Client(TBinaryProtocol.TBinaryProtocol(self._transport))
            self._transport.open()
        return self._client

    def _call(self, fn):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(self._connect())
            except RETRIABLE as e:
                if not isinstance(e, (Overloaded, Unavailable)):
                    self.close()  # the connection is in an unknown state: start afresh
                if attempt == self.retries:
                    raise _error(e) from e
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
            except (InvalidInput, ModelNotFound, DeadlineExceeded) as e:
                raise _error(e) from e

    def model(self) -> str:
        """The name of the model the frontend serves (asked once)."""
        if self._model is None:
            self._model = self.models()[0].name
        return self._model

    def _request(self, image: ImageLike, model, top_k, deadline_ms, request_id) -> InferRequest:
        return InferRequest(model=model or self.model(), input=_input(image), top_k=top_k,
                            deadline_ms=deadline_ms, request_id=request_id)

    def infer(self, image: ImageLike, model: Optional[str] = None, top_k: Optional[int] = None,
              deadline_ms: Optional[int] = None, request_id: Optional[str] = None) -> Answer:
        req = self._request(image, model, top_k, deadline_ms, request_id)
        return Answer.of(self._call(lambda c: c.infer(req)))

    def infer_batch(self, images: Sequence[ImageLike], model: Optional[str] = None,
                    top_k: Optional[int] = None, deadline_ms: Optional[int] = None) -> List[Answer]:
        """All or nothing: one bad item fails the whole call (its position is in the message)."""
        reqs = [self._request(i, model, top_k, deadline_ms, None) for i in images]
        return [Answer.of(r) for r in self._call(lambda c: c.infer_batch(reqs))]

    def infer_each(self, images: Sequence[ImageLike], model: Optional[str] = None,
                   top_k: Optional[int] = None, deadline_ms: Optional[int] = None) -> List[Outcome]:
        """One outcome per item: a bad item fails alone."""
        reqs = [self._request(i, model, top_k, deadline_ms, None) for i in images]
        out = []
        for o in self._call(lambda c: c.infer_each(reqs)):
            if o.response is not None:
                out.append(Outcome(Answer.of(o.response), None))
            else:
                err = next(e for e in (o.invalid, o.not_found, o.overloaded, o.unavailable, o.deadline) if e)
                out.append(Outcome(None, _error(err)))
        return out

    def models(self):
        return self._call(lambda c: c.models())

    def health(self):
        return self._call(lambda c: c.health())

    def stats(self):
        return self._call(lambda c: c.stats())

