"""Coverage-guided fuzzing of the parser with atheris (run by
test_fuzz_atheris.py in a subprocess; by hand:
`python testsuite/unit/fuzz_parser.py -max_total_time=60`).

A crash is any exception other than ProtocolError from protocol.decode,
validate_request, Report.from_wire or Instruction.from_wire."""
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))    # the checkout, for pgha

with atheris.instrument_imports():
    from pgha import messages, protocol
    from pgha.errors import ProtocolError


def one_input(data: bytes) -> None:
    try:
        message = protocol.decode(data)
    except ProtocolError:
        return
    for parse in (protocol.validate_request, messages.Report.from_wire, messages.Instruction.from_wire,
                  lambda m: messages.Report.from_wire(m.get("report"))):
        try:
            parse(dict(message))
        except ProtocolError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
