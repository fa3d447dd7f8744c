"""Veil guest SDK for Python (componentize-py, the `map-block` world of wit/veil-analysis.wit).

Python guests run in sample-and-aggregate mode: `run(input, analysis)` decodes one block of units
(rows of the columns the job asked for), calls `analysis(unit, out)`, and encodes what it emitted.
An exception is written to the holder-only log and the block then counts as the middle of each
value's range; the consumer never sees it.
"""
import struct

INT, FLOAT, TEXT, BOOL = 0, 1, 2, 3


class Unit:
    """A block's rows: `columns` is a list of (name, type); `rows` a list of lists of values
    (int, float, str, bool or None)."""

    def __init__(self, data: bytes):
        if data[:4] != b"VUN1":
            raise ValueError("not a Veil unit encoding")
        at = 4
        (ncols,) = struct.unpack_from("<I", data, at)
        at += 4
        self.columns = []
        for _ in range(ncols):
            kind = data[at]
            (n,) = struct.unpack_from("<I", data, at + 1)
            at += 5
            self.columns.append((data[at : at + n].decode("utf-8"), kind))
            at += n
        (nrows,) = struct.unpack_from("<I", data, at)
        at += 4
        self.rows = []
        for _ in range(nrows):
            row = []
            for _ in range(ncols):
                tag = data[at]
                at += 1
                if tag == 0:
                    row.append(None)
                elif tag == 1:
                    row.append(struct.unpack_from("<q", data, at)[0])
                    at += 8
                elif tag == 2:
                    row.append(struct.unpack_from("<d", data, at)[0])
                    at += 8
                elif tag == 3:
                    (n,) = struct.unpack_from("<I", data, at)
                    row.append(data[at + 4 : at + 4 + n].decode("utf-8"))
                    at += 4 + n
                elif tag == 4:
                    row.append(data[at] != 0)
                    at += 1
                else:
                    raise ValueError(f"unknown value tag {tag}")
            self.rows.append(row)

    def column(self, name):
        """Index of the column called `name`, or None."""
        for i, (n, _) in enumerate(self.columns):
            if n == name:
                return i
        return None


class Emitter:
    def __init__(self):
        self.contributions = []

    def emit(self, key, values):
        """One contribution: key parts (strings) and numbers."""
        self.contributions.append((list(key), [float(v) for v in values]))

    def encode(self) -> bytes:
        out = [struct.pack("<I", len(self.contributions))]
        for key, values in self.contributions:
            out.append(struct.pack("<I", len(key)))
            for part in key:
                b = part.encode("utf-8")
                out.append(struct.pack("<I", len(b)) + b)
            out.append(struct.pack("<I", len(values)))
            out.append(struct.pack(f"<{len(values)}d", *values))
        return b"".join(out)


def log(message: str):
    """Writes a line to the holder-only job log."""
    from wit_world import log_line

    log_line(message)


def run(data: bytes, analysis) -> bytes:
    unit = Unit(data)
    out = Emitter()
    try:
        analysis(unit, out)
    except Exception as e:  # noqa: BLE001 - the holder sees it, the block counts as the midpoint
        log(f"{type(e).__name__}: {e}")
        raise
    return out.encode()
