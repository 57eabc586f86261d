"""``kyojo decode ble``: decode one BLE characteristic value (or a bare SFLOAT/FLOAT) and print JSON.

Mounted by the lead's CLI with :func:`register`. Output is one JSON object on stdout: ``{"valid": true, ...}``
with the decoded fields named as in the test vectors, or ``{"valid": false, "error": ..., "reason": ...,
"offset": ...}`` for a value a conformant decoder must reject (exit code 0 in both cases: the command did its
job). Unusable arguments (not hex, unknown characteristic) print ``valid: false`` too and exit with 2.
A value that carries values reserved for future use is valid; ``--reserved`` adds a ``"reserved"`` object
listing them.
"""

from __future__ import annotations

import binascii
import json
from enum import StrEnum
from typing import Annotated

import typer

from drivers.ble import gatt, ieee11073
from drivers.ble.convert import to_readings
from drivers.ble.errors import BleParseError, UnknownCharacteristic


class NumberFormat(StrEnum):
    """Bare IEEE-11073 number formats."""

    sfloat = "sfloat"
    float = "float"


def _emit(obj: dict[str, object]) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


def _hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    cleaned = cleaned.removeprefix("0x").removeprefix("0X")
    return binascii.unhexlify(cleaned)


def decode_to_json(
    characteristic: str, hex_value: str, *, lenient: bool = False, reserved: bool = False
) -> dict[str, object]:
    """The JSON object ``kyojo decode ble`` prints for a characteristic value (raises on bad arguments).

    ``reserved``: add a ``"reserved"`` object naming the reserved-for-future-use values the value carries.
    """
    data = _hex(hex_value)
    try:
        decoded = gatt.decode(characteristic, data, lenient=lenient)
    except UnknownCharacteristic:
        raise  # an argument error, not a rejected payload
    except BleParseError as err:
        return {"valid": False, "error": err.detail, "reason": err.reason, "offset": err.offset}
    return {"valid": True, **gatt.as_json(decoded, reserved=reserved)}


def number_to_json(fmt: NumberFormat, hex_value: str) -> dict[str, object]:
    """The JSON object for a bare SFLOAT (2 bytes) or FLOAT (4 bytes), little-endian as on the wire."""
    data = _hex(hex_value)
    size = 2 if fmt is NumberFormat.sfloat else 4
    if len(data) != size:
        return {"valid": False, "error": f"{fmt.value.upper()} is exactly {size} bytes", "reason": "length"}
    value = ieee11073.decode_sfloat(data) if size == 2 else ieee11073.decode_float(data)
    return {"valid": True, "value": str(value) if isinstance(value, ieee11073.Special) else value}


def register(decode_app: typer.Typer) -> None:
    """Add the ``ble`` command to the ``kyojo decode`` group."""

    @decode_app.command("ble")
    def ble(
        args: Annotated[
            list[str],
            typer.Argument(
                help="CHARACTERISTIC HEX (UUID as 2A37, 0x2A37 or 128-bit), or only HEX with --format.",
                show_default=False,
            ),
        ],
        number_format: Annotated[
            NumberFormat | None,
            typer.Option("--format", help="Decode HEX as a bare IEEE-11073 number instead."),
        ] = None,
        lenient: Annotated[
            bool, typer.Option("--lenient", help="Ignore trailing bytes after the last field (padding).")
        ] = False,
        readings: Annotated[
            bool, typer.Option("--readings", help="Also list the Readings and the values held back.")
        ] = False,
        reserved: Annotated[
            bool,
            typer.Option("--reserved", help='Also list values the specification reserves for future use ("reserved").'),
        ] = False,
    ) -> None:
        """Decode a characteristic value (or a bare SFLOAT/FLOAT) and print one JSON object."""
        want = 1 if number_format is not None else 2
        if len(args) != want:
            usage = "HEX" if want == 1 else "CHARACTERISTIC HEX"
            _emit({"valid": False, "error": f"expected {usage}", "reason": "usage"})
            raise typer.Exit(2)
        try:
            if number_format is not None:
                out = number_to_json(number_format, args[0])
            else:
                out = decode_to_json(args[0], args[1], lenient=lenient, reserved=reserved)
                if readings and out["valid"]:
                    conv = to_readings(
                        gatt.decode(args[0], _hex(args[1]), lenient=lenient), device="cli", subject="cli", ts=0.0
                    )
                    out["readings"] = [{"metric": r.metric, "value": r.value, "unit": r.unit} for r in conv.readings]
                    out["flagged"] = [{"metric": f.metric, "value": f.value, "reason": f.reason} for f in conv.flagged]
        except UnknownCharacteristic as err:
            _emit({"valid": False, "error": err.detail, "reason": err.reason})
            raise typer.Exit(2) from err
        except (binascii.Error, ValueError) as err:
            _emit({"valid": False, "error": f"not a hex string: {err}", "reason": "usage"})
            raise typer.Exit(2) from err
        _emit(out)
