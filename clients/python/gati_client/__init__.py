"""Python client for gati's Thrift frontend.

    from gati_client import Client
    with Client("127.0.0.1:7000") as c:
        r = c.infer("face.png")            # a file path, encoded bytes, or a numpy array
        print(r.class_name, r.confidence, r.source_name)

The generated Thrift code (from thrift/gati.thrift, by scripts/gen-thrift.sh) is in
`gati_client.gen.gati`; `Client` wraps it with connection timeouts, retries with back-off on
`Overloaded`/`Unavailable` and broken connections, and input conversion.
"""
from .client import Client, Answer, Outcome, GatiError, normalise
from .gen.gati.ttypes import (
    DeadlineExceeded,
    InvalidInput,
    ModelInfo,
    ModelNotFound,
    Overloaded,
    Unavailable,
)

__all__ = [
    "Client",
    "Answer",
    "Outcome",
    "GatiError",
    "normalise",
    "ModelInfo",
    "InvalidInput",
    "ModelNotFound",
    "Overloaded",
    "Unavailable",
    "DeadlineExceeded",
]
