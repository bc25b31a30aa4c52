"""atheris harness: any input to ``protocol.decode_request`` decodes or raises RequestError.

The same property as ``tests/test_fuzz.py``, with coverage guidance::

    pip install atheris
    python fuzzing/fuzz_decode_request.py -max_total_time=60

Any exception other than :class:`tickwire.exceptions.RequestError` (with a documented
code) is a crash, and atheris saves the input that caused it.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from tickwire.exceptions import RequestError
    from tickwire.protocol import ErrorCode, decode_request, encode

CODES = {c.value for c in ErrorCode}


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    binary = fdp.ConsumeBool()
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        req = decode_request(payload, binary)
    except RequestError as exc:
        assert exc.code in CODES, exc.code
        return
    # A decoded request re-encodes (as JSON) to the same request.
    assert decode_request(encode(req)) == req


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
