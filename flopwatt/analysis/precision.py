"""Numeric precisions flopwatt measures and models, with one parser for every entry point."""

from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    """A numeric format. Values are the lowercase label used on the wire and in Prometheus."""

    FP64 = "fp64"
    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    INT2 = "int2"
    FP4 = "fp4"

    @property
    def display(self) -> str:
        """Upper-case name for tables (``FP16``)."""
        return self.value.upper()

    @property
    def is_integer(self) -> bool:
        """True for integer formats, whose throughput is quoted in OP/s (TOPS), not FLOP/s."""
        return self.value.startswith("int")

    @classmethod
    def parse(cls, text: str) -> Precision:
        """Parse a precision name case-insensitively (``fp16``, ``FP16``, ``Fp16``).

        Raises:
            ValueError: the name is not a known precision; the message lists the accepted names.
        """
        key = text.strip().lower()
        for member in cls:
            if member.value == key:
                return member
        accepted = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown precision {text!r}; accepted: {accepted}")
